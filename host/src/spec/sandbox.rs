//! CRI `PodSandboxConfig` → the agent's SetupSandbox request: the pod's
//! hostname, the /etc/hosts and resolv.conf every container binds, and its
//! namespaced sysctls. Pure; the agent checks the sysctl names.

use std::fmt::Write as _;

use husk_agent_client::SandboxConfig;
use k8s_cri::v1::{DnsConfig, PodSandboxConfig};

/// The longest hostname Linux takes (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 63;

/// What the pod's guest is told about itself.
pub fn sandbox_config(pod: &PodSandboxConfig) -> SandboxConfig {
    let hostname = hostname(pod);
    SandboxConfig {
        hosts: hosts(&hostname),
        resolv_conf: pod.dns_config.as_ref().map(resolv_conf).unwrap_or_default(),
        sysctls: pod
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
        hostname,
    }
}

/// The pod's hostname, or (as kubelet leaves it empty for some pods) the
/// start of the pod's name.
fn hostname(pod: &PodSandboxConfig) -> String {
    if !pod.hostname.is_empty() {
        return pod.hostname.clone();
    }
    pod.metadata
        .as_ref()
        .map(|m| m.name.chars().take(MAX_HOSTNAME).collect())
        .unwrap_or_default()
}

fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// resolv.conf as kubelet asked for it; empty (the guest's own) without a
/// DNS config.
fn resolv_conf(dns: &DnsConfig) -> String {
    let mut text = String::new();
    if !dns.searches.is_empty() {
        let _ = writeln!(text, "search {}", dns.searches.join(" "));
    }
    for server in &dns.servers {
        let _ = writeln!(text, "nameserver {server}");
    }
    if !dns.options.is_empty() {
        let _ = writeln!(text, "options {}", dns.options.join(" "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{LinuxPodSandboxConfig, PodSandboxMetadata};

    fn pod(name: &str, hostname: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                ..Default::default()
            }),
            hostname: hostname.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_hostname_is_the_pods_or_the_start_of_its_name() {
        assert_eq!(sandbox_config(&pod("web-0", "web")).hostname, "web");
        let long = "x".repeat(80);
        let config = sandbox_config(&pod(&long, ""));
        assert_eq!(config.hostname, "x".repeat(63));
        assert!(config
            .hosts
            .ends_with(&format!("127.0.1.1\t{}\n", "x".repeat(63))));
    }

    #[test]
    fn hosts_names_localhost_and_the_pod() {
        let config = sandbox_config(&pod("web-0", "web"));
        assert_eq!(
            config.hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb\n"
        );
    }

    #[test]
    fn resolv_conf_follows_the_dns_config_and_is_empty_without_one() {
        assert_eq!(sandbox_config(&pod("a", "a")).resolv_conf, "");
        let mut config = pod("a", "a");
        config.dns_config = Some(DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec!["shop.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        assert_eq!(
            sandbox_config(&config).resolv_conf,
            "search shop.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5\n"
        );
        config.dns_config = Some(DnsConfig {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        });
        assert_eq!(sandbox_config(&config).resolv_conf, "nameserver 1.1.1.1\n");
    }

    #[test]
    fn sysctls_are_passed_on() {
        let mut config = pod("a", "a");
        config.linux = Some(LinuxPodSandboxConfig {
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
            ..Default::default()
        });
        let sysctls = sandbox_config(&config).sysctls;
        assert_eq!(sysctls.len(), 1);
        assert_eq!(sysctls["net.ipv4.ip_forward"], "1");
    }
}
