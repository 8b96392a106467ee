//! Every wait and deadline of the daemon, named in one place. A guest, a
//! VMM or a client that stops answering must never hang a CRI call or the
//! daemon's start; each of these says how long we give it.

use std::time::Duration;

/// One agent call that should answer at once (state, stats, signals,
/// create, start, sandbox set-up).
pub const AGENT_CALL: Duration = Duration::from_secs(30);

/// Reconnecting to the agent of a running VM after a daemon restart: a
/// running guest answers at once, one that does not is treated as broken.
pub const AGENT_REATTACH: Duration = Duration::from_secs(15);

/// A powered-off guest ends its VMM within this long, or is killed.
pub const GUEST_SHUTDOWN: Duration = Duration::from_secs(5);

/// A SIGKILLed container is reported gone within this long.
pub const CONTAINER_KILL: Duration = Duration::from_secs(10);

/// DeleteContainer with force: kill, wait, remove the rootfs.
pub const CONTAINER_DELETE: Duration = Duration::from_secs(20);

/// A killed VMM disappears within this long.
pub const VM_KILL_WAIT: Duration = Duration::from_secs(20);

/// Pause before following a broken agent event stream again.
pub const EVENTS_RESUBSCRIBE: Duration = Duration::from_secs(1);

/// ExecSync without a timeout from the client still ends after this.
pub const EXEC_SYNC_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// After SIGTERM, open CRI calls (event streams never end by themselves)
/// get this long before the daemon exits anyway.
pub const SERVER_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connecting to a registry (TCP and TLS): a mirror that is down must not
/// hold up the fall-back to the next endpoint.
pub const REGISTRY_CONNECT: Duration = Duration::from_secs(10);

/// Silence on an open registry connection (per read, so big layers are
/// fine).
pub const REGISTRY_READ: Duration = Duration::from_secs(60);

/// An OAuth2 token exchange with a registry's token service, both requests.
pub const REGISTRY_TOKEN: Duration = Duration::from_secs(30);
