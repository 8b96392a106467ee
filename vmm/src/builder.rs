//! Assembles a VM from a checked [`VmConfig`]: memory, KVM objects,
//! devices on their buses, the guest's software, vCPU threads. Then runs
//! the device event loop until the guest stops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use husk_virtio::{MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE};
use kvm_ioctls::IoEventAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{FIRST_VIRTIO_IRQ, LAST_IRQ, SERIAL_IRQ, VIRTIO_MMIO_START};
use crate::arch::{self, regs};
use crate::boot;
use crate::bus::{self, Bus, MmioDevice, PioDevice};
use crate::config::{VmConfig, SHARED_DIR_TAG};
use crate::legacy::{self, ConsoleSink, EventFdTrigger, ResetLine, ResetTrigger, SerialConsole};
use crate::vstate::exit::{ExitReason, ExitSignal};
use crate::vstate::vcpu::{self, Buses, Vcpu};
use crate::vstate::vm::{self, Vm};
use husk_virtio::GuestMemory as Memory;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("cannot write boot page tables: {0}")]
    BootTables(#[from] regs::Error),
    #[error(transparent)]
    Bus(#[from] bus::Error),
    #[error("--console {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("vsock device: {0}")]
    Vsock(#[source] husk_vsock::Error),
    #[error("virtio-fs device: {0}")]
    Fs(#[source] husk_virtiofs::Error),
    #[error("too many virtio devices for the free IRQ lines")]
    OutOfIrqs,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error("event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Everything the running VM needs to stay alive.
pub struct Vmm {
    vm: Vm,
    mem: Memory,
    pio: Bus<dyn PioDevice>,
    mmio: Bus<dyn MmioDevice>,
    events: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
    serial: Arc<Mutex<SerialConsole>>,
    virtio: Vec<(u64, u32)>,
}

impl Vmm {
    /// Creates the VM and its fixed devices.
    pub fn new(mem_bytes: u64, console: ConsoleSink) -> Result<Self, Error> {
        let mem =
            Memory::from_ranges(&arch::ram_regions(mem_bytes)).map_err(|source| Error::Memory {
                mib: mem_bytes >> 20,
                source,
            })?;
        let vm = Vm::new()?;
        vm.map_memory(&mem)?;
        vm.create_irqchip_and_pit()?;
        let exit = Arc::new(ExitSignal::new().map_err(io("create the exit event"))?);
        let mut events: EventManager<Subscriber> = EventManager::new().map_err(Error::EventLoop)?;
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));

        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io("create the serial irqfd"))?;
        vm.fd()
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(vm::kvm_err("route the serial IRQ"))?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            EventFdTrigger(serial_irq),
            console,
        )));
        let mut pio: Bus<dyn PioDevice> = Bus::default();
        pio.insert(
            legacy::COM1_PORT.into(),
            legacy::COM1_PORT_COUNT.into(),
            serial.clone(),
        )?;
        let reset = Arc::new(Mutex::new(ResetLine::new(ResetTrigger(exit.clone()))));
        pio.insert(
            legacy::I8042_DATA_PORT.into(),
            legacy::I8042_PORT_COUNT.into(),
            reset,
        )?;

        Ok(Self {
            vm,
            mem,
            pio,
            mmio: Bus::default(),
            events,
            exit,
            serial,
            virtio: Vec::new(),
        })
    }

    pub fn mem(&self) -> &Memory {
        &self.mem
    }

    /// Puts a virtio device behind the next virtio-mmio window: its IRQ
    /// is an irqfd, its queue notifications ioeventfds, its queue work
    /// runs on the event loop.
    pub fn add_virtio_device<D>(&mut self, device: Arc<Mutex<D>>) -> Result<(), Error>
    where
        D: VirtioDevice + 'static,
    {
        let index = self.virtio.len() as u64;
        let irq = FIRST_VIRTIO_IRQ + index as u32;
        if irq > LAST_IRQ {
            return Err(Error::OutOfIrqs);
        }
        let base = VIRTIO_MMIO_START + index * MMIO_WINDOW_SIZE;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(io("create a virtio irqfd"))?;
        self.vm
            .fd()
            .register_irqfd(&irqfd, irq)
            .map_err(vm::kvm_err("route a virtio IRQ"))?;
        {
            let locked = device.lock().unwrap_or_else(|p| p.into_inner());
            for (queue, event) in locked.queue_events().iter().enumerate() {
                let notify = IoEventAddress::Mmio(base + MmioTransport::queue_notify_offset());
                self.vm
                    .fd()
                    .register_ioevent(event, &notify, queue as u32)
                    .map_err(vm::kvm_err("register a queue ioeventfd"))?;
            }
        }
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let transport = MmioTransport::new(self.mem.clone(), as_virtio, Arc::new(irqfd));
        self.mmio
            .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
        let as_subscriber: Subscriber = device;
        self.events.add_subscriber(as_subscriber);
        self.virtio.push((base, irq));
        Ok(())
    }

    /// Loads kernel and initrd, writes boot structures, creates the vCPUs
    /// and starts them.
    pub fn boot(&mut self, config: &VmConfig) -> Result<Vec<std::thread::JoinHandle<()>>, Error> {
        let started = Instant::now();
        let kernel = boot::load_kernel(&self.mem, &config.kernel)?;
        let initrd = boot::load_initrd(&self.mem, &config.initrd, kernel.end)?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            kernel_end = format_args!("{:#x}", kernel.end),
            initrd_bytes = initrd.size,
            "guest software loaded"
        );
        let devices: Vec<_> = self
            .virtio
            .iter()
            .map(|&(base, irq)| (base, MMIO_WINDOW_SIZE, irq))
            .collect();
        let cmdline = boot::cmdline(&devices, config.cmdline_extra.as_deref())?;
        boot::write_boot_info(&self.mem, &cmdline, Some(initrd), config.vcpus)?;
        let cr3 = regs::write_boot_tables(&self.mem)?;

        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for id in 0..config.vcpus {
            let vcpu = Vcpu::new(&self.vm, id)?;
            vcpu.configure(&self.vm, config.vcpus)?;
            if id == 0 {
                vcpu.set_boot_registers(kernel.entry.0, cr3)?;
            }
            vcpus.push(vcpu);
        }
        // Setup is over: from here on the process only serves the guest,
        // so what it must never do is enforced before the guest runs.
        crate::seccomp::install()?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            vcpus = config.vcpus,
            "starting vCPUs"
        );
        self.start_vcpus(vcpus)
    }

    /// The KVM VM (to create vCPUs for [`Vmm::start_vcpus`]).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Starts configured vCPUs on their threads. The buses are frozen from
    /// here on: devices are added before the guest runs.
    pub fn start_vcpus(
        &mut self,
        vcpus: Vec<Vcpu>,
    ) -> Result<Vec<std::thread::JoinHandle<()>>, Error> {
        let buses = Buses {
            pio: Arc::new(std::mem::take(&mut self.pio)),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
        };
        vcpus
            .into_iter()
            .map(|vcpu| Ok(vcpu.start(buses.clone(), self.exit.clone())?))
            .collect()
    }

    /// Serves device events until the guest stops; returns why.
    pub fn run_until_exit(&mut self) -> Result<ExitReason, Error> {
        loop {
            if let Some(reason) = self.exit.reason() {
                self.serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .flush();
                return Ok(reason);
            }
            self.events.run().map_err(Error::EventLoop)?;
        }
    }
}

/// Boots and runs the VM described by `config`.
pub fn run(config: &VmConfig) -> Result<ExitReason, Error> {
    let started = Instant::now();
    config.validate()?;
    let console = match &config.console {
        Some(path) => ConsoleSink::file(path).map_err(|source| Error::Console {
            path: path.clone(),
            source,
        })?,
        None => ConsoleSink::stdout(),
    };
    let mut vmm = Vmm::new(config.memory_bytes(), console)?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "VM and legacy devices created"
    );
    // The vsock socket is created first: virtio-fs's passthrough sets the
    // process umask to 0 when it opens the shared folder.
    let vsock =
        husk_vsock::Vsock::new(config.cid, config.vsock_uds.clone()).map_err(Error::Vsock)?;
    let vsock = Arc::new(Mutex::new(vsock));
    vmm.add_virtio_device(vsock.clone())?;
    if let Some(dir) = &config.shared_dir {
        let fs = husk_virtiofs::Fs::new(SHARED_DIR_TAG, dir).map_err(Error::Fs)?;
        vmm.add_virtio_device(Arc::new(Mutex::new(fs)))?;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "virtio devices created"
    );
    let _vcpus = vmm.boot(config)?;
    let reason = vmm.run_until_exit()?;
    // The guest's last words (e.g. the agent's reply to Shutdown) may still
    // sit in a connection buffer: give them a moment to reach the host.
    vsock
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush_before_exit(Instant::now() + VSOCK_FLUSH_TIMEOUT);
    Ok(reason)
}

/// How long an exiting VMM waits for host sockets to take pending bytes.
const VSOCK_FLUSH_TIMEOUT: Duration = Duration::from_millis(200);

/// Wakes the event loop when the VM stops, so `run_until_exit` notices.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            tracing::error!(%error, "cannot watch the exit event");
        }
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}
