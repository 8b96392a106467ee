//! husk-vmm's command line as one typed struct. The daemon builds the argv
//! from it, and a test parses that argv with husk-vmm's own parser, so a
//! flag renamed on either side fails a test instead of a pod.

use std::ffi::OsString;
use std::path::PathBuf;

/// Everything the daemon tells one husk-vmm process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmArgs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub cid: u64,
    /// The hybrid-vsock socket the daemon reaches the agent through.
    pub vsock_uds: PathBuf,
    /// Where the guest's serial console goes.
    pub console: Option<PathBuf>,
    /// The folder shared with the guest over virtio-fs.
    pub shared_dir: Option<PathBuf>,
    pub cmdline_extra: Option<String>,
    /// husk-vmm's own log level (`error`, `warn`, `info`, …).
    pub log_level: Option<String>,
}

impl VmmArgs {
    /// The arguments after the program name, in husk-vmm's flag spelling.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::with_capacity(20);
        let mut flag = |name: &str, value: OsString| {
            argv.push(name.into());
            argv.push(value);
        };
        flag("--kernel", self.kernel.clone().into());
        flag("--initrd", self.initrd.clone().into());
        flag("--vcpus", self.vcpus.to_string().into());
        flag("--memory-mib", self.memory_mib.to_string().into());
        flag("--cid", self.cid.to_string().into());
        flag("--vsock-uds", self.vsock_uds.clone().into());
        if let Some(console) = &self.console {
            flag("--console", console.clone().into());
        }
        if let Some(shared) = &self.shared_dir {
            flag("--shared-dir", shared.clone().into());
        }
        if let Some(extra) = &self.cmdline_extra {
            flag("--cmdline-extra", extra.into());
        }
        if let Some(level) = &self.log_level {
            flag("--log-level", level.into());
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use husk_vmm::config::VmConfig;

    fn parse(args: &VmmArgs) -> VmConfig {
        let argv = std::iter::once(OsString::from("husk-vmm")).chain(args.to_argv());
        VmConfig::try_parse_from(argv).expect("husk-vmm accepts the daemon's argv")
    }

    fn full() -> VmmArgs {
        VmmArgs {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
            vcpus: 3,
            memory_mib: 384,
            cid: 77,
            vsock_uds: "/run/husk/pods/p1/vsock.sock".into(),
            console: Some("/run/husk/pods/p1/console.log".into()),
            shared_dir: Some("/run/husk/pods/p1/shared".into()),
            cmdline_extra: Some("quiet loglevel=3".into()),
            log_level: Some("debug".into()),
        }
    }

    #[test]
    fn every_field_reaches_husk_vmm_unchanged() {
        let args = full();
        let parsed = parse(&args);
        assert_eq!(parsed.kernel, args.kernel);
        assert_eq!(parsed.initrd, args.initrd);
        assert_eq!(parsed.vcpus, args.vcpus);
        assert_eq!(parsed.memory_mib, args.memory_mib);
        assert_eq!(parsed.cid, args.cid);
        assert_eq!(parsed.vsock_uds, args.vsock_uds);
        assert_eq!(parsed.console, args.console);
        assert_eq!(parsed.shared_dir, args.shared_dir);
        assert_eq!(parsed.cmdline_extra, args.cmdline_extra);
        assert_eq!(parsed.log_level, tracing::Level::DEBUG);
    }

    #[test]
    fn optional_fields_left_out_take_husk_vmm_defaults() {
        let args = VmmArgs {
            console: None,
            shared_dir: None,
            cmdline_extra: None,
            log_level: None,
            ..full()
        };
        let argv = args.to_argv();
        assert!(!argv.iter().any(|a| a == "--console" || a == "--shared-dir"));
        let parsed = parse(&args);
        assert_eq!(parsed.console, None);
        assert_eq!(parsed.shared_dir, None);
        assert_eq!(parsed.cmdline_extra, None);
        assert_eq!(parsed.log_level, tracing::Level::WARN);
    }

    #[test]
    fn paths_with_spaces_stay_one_argument() {
        let args = VmmArgs {
            vsock_uds: "/run/my pods/p 1/vsock.sock".into(),
            ..full()
        };
        assert_eq!(parse(&args).vsock_uds, args.vsock_uds);
    }
}
