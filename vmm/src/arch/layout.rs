//! Where things live in guest-physical memory. The low addresses follow
//! the conventions of the x86 Linux boot protocol and of the PC (real-mode
//! area, EBDA, 1 MiB "high memory" start); the MMIO gap below 4 GiB holds
//! the virtio-mmio windows, the IOAPIC and the local APICs.

/// GDT with the 64-bit boot segments.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The "zero page" (struct boot_params) the kernel reads first.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack; the kernel switches away from it immediately.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the first GiB: PML4, PDPT, PD with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line, and its maximum length (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The last KiB of base memory, scanned by the kernel for the MP table.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel may be loaded and where usable high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start and size of the hole below 4 GiB that holds no RAM.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window; each device takes one `MMIO_WINDOW_SIZE` page.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map on Intel;
/// both sit in the MMIO gap, above the APICs, where no device lives.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy IRQ lines: the serial port keeps the PC's COM1 line; virtio
/// devices take the free IOAPIC pins from 5 up.
pub const SERIAL_IRQ: u32 = 4;
pub const FIRST_VIRTIO_IRQ: u32 = 5;
pub const LAST_IRQ: u32 = 23;
