//! The versioned host <-> guest agent API (`agent.proto`), shared by the
//! host's client and husk-agent's server so both agree on limits and ports.

/// Generated from `agent.proto`.
pub mod agent {
    /// `husk.agent.v1`: additive changes only (see `agent.proto`).
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("husk.agent.v1");
    }
}

/// Revision of `husk.agent.v1` implemented by this build. Bump it with every
/// additive change to `agent.proto`; Health reports it so the host can tell
/// which calls an agent understands.
///
/// History: 1 Health, Shutdown; 2 ReadFile, WriteFile; 3 sandbox, network,
/// containers, processes and guest metrics; 4 exit reasons and cgroup
/// versions as enums, ContainerStatus/ContainerState named as in the CRI
/// (the ContainerState call became ContainerStatus).
pub const API_VERSION: u32 = 4;

/// The oldest agent API the host works with: the container calls came in 3.
/// Checked by the client on every connect.
pub const MIN_API_VERSION: u32 = 3;

/// The AF_VSOCK port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Largest gRPC message either side encodes or accepts (4 MiB). Bounds the
/// memory a misbehaving peer can make the other side allocate; set as both
/// the max decoding and max encoding size on client and server.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Most file content ReadFile returns or WriteFile accepts in one call
/// (1 MiB): far below [`MAX_MESSAGE_SIZE`], so a reply always fits.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Longest path ReadFile and WriteFile accept, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Where the guest mounts the virtio-fs share the VMM exports with tag
/// [`SHARED_DIR_TAG`]; ReadFile and WriteFile only touch files under it.
pub const SHARED_DIR_GUEST_PATH: &str = "/run/husk/shared";

/// The virtio-fs tag of the host folder shared with the guest.
pub const SHARED_DIR_TAG: &str = "husk-shared";

/// Longest container or exec id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Most OCI JSON (spec, process or resources) one request carries (1 MiB).
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// Most image layers one container may stack.
pub const MAX_LAYERS: usize = 128;

/// Most bytes per WriteStdin call and per streamed OutputChunk (64 KiB).
pub const MAX_STDIO_CHUNK: usize = 64 * 1024;

/// Most bytes of /etc/hosts or resolv.conf SetupSandbox accepts (64 KiB).
pub const MAX_SANDBOX_FILE_BYTES: usize = 64 * 1024;

/// Most containers one sandbox holds at once.
pub const MAX_CONTAINERS: usize = 1024;

/// Most exec'd processes one container holds at once (running or not yet
/// deleted).
pub const MAX_EXECS: usize = 1024;
