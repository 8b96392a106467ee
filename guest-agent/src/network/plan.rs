//! A SetupNetworkRequest checked and parsed in full before any netlink
//! call, so a bad request changes nothing. Each refusal names its field.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use husk_proto::agent::v1::{Interface, Route, SetupNetworkRequest};

use super::NetworkError;

/// Bounds on one request: far above any pod, low enough that a runaway
/// host cannot keep the agent busy with netlink calls.
pub const MAX_INTERFACES: usize = 64;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 256;

/// The kernel's IFNAMSIZ less the terminating NUL.
const MAX_NAME_BYTES: usize = 15;

/// An address with its prefix length, e.g. `10.0.0.2/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What to do to one existing link.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkPlan {
    pub name: String,
    /// Where the name came from, for NOT_FOUND.
    pub field: String,
    pub mtu: Option<u32>,
    /// `None` leaves the link's addresses alone.
    pub addresses: Option<Vec<Cidr>>,
    pub up: bool,
}

/// One route to add or replace in the main table.
#[derive(Debug, PartialEq, Eq)]
pub struct RoutePlan {
    /// Prefix 0 for a default route.
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
    /// Where the device came from, for NOT_FOUND.
    pub field: String,
}

impl fmt::Display for RoutePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.destination.prefix == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.destination)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(device) = &self.device {
            write!(f, " dev {device}")?;
        }
        Ok(())
    }
}

/// The whole request, valid.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub links: Vec<LinkPlan>,
    pub routes: Vec<RoutePlan>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Plan {
    pub fn new(request: &SetupNetworkRequest) -> Result<Self, NetworkError> {
        check_count("interfaces", request.interfaces.len(), MAX_INTERFACES)?;
        check_count("routes", request.routes.len(), MAX_ROUTES)?;
        let mut names = HashSet::new();
        let mut links = Vec::with_capacity(request.interfaces.len());
        for (i, interface) in request.interfaces.iter().enumerate() {
            let link = link_plan(&format!("interfaces[{i}]"), interface)?;
            // Two entries for one link would contradict each other.
            if !names.insert(link.name.clone()) {
                return Err(invalid(
                    &link.field,
                    format!("{:?} is listed twice", link.name),
                ));
            }
            links.push(link);
        }
        let mut destinations = HashSet::new();
        let mut routes = Vec::with_capacity(request.routes.len());
        for (i, route) in request.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            let route = route_plan(&field, route)?;
            // The second would silently replace the first.
            if !destinations.insert(route.destination) {
                return Err(invalid(
                    format!("{field}.destination"),
                    format!("a route to {} is listed twice", route.destination),
                ));
            }
            routes.push(route);
        }
        Ok(Self { links, routes })
    }

    /// Every link name the plan needs, each once, in request order.
    pub fn link_names(&self) -> Vec<(&str, &str)> {
        let mut seen = HashSet::new();
        let links = self
            .links
            .iter()
            .map(|l| (l.name.as_str(), l.field.as_str()));
        let devices = self
            .routes
            .iter()
            .filter_map(|r| Some((r.device.as_deref()?, r.field.as_str())));
        links
            .chain(devices)
            .filter(|(name, _)| seen.insert(*name))
            .collect()
    }
}

fn check_count(field: &str, len: usize, limit: usize) -> Result<(), NetworkError> {
    if len > limit {
        return Err(invalid(
            field,
            format!("{len} entries is above the limit of {limit}"),
        ));
    }
    Ok(())
}

fn link_plan(field: &str, interface: &Interface) -> Result<LinkPlan, NetworkError> {
    check_name(&format!("{field}.name"), &interface.name)?;
    let mtu = match interface.mtu {
        0 => None,
        // 68 is IPv4's minimum; the kernel's own upper bound is per driver.
        mtu @ 68..=65535 => Some(mtu),
        mtu => {
            return Err(invalid(
                format!("{field}.mtu"),
                format!("{mtu} is not 0 (unchanged) or 68-65535"),
            ))
        }
    };
    let addresses = &interface.addresses;
    check_count(
        &format!("{field}.addresses"),
        addresses.len(),
        MAX_ADDRESSES,
    )?;
    let mut parsed = Vec::with_capacity(addresses.len());
    for (i, address) in addresses.iter().enumerate() {
        let field = format!("{field}.addresses[{i}]");
        let cidr = parse_cidr(address).map_err(|reason| invalid(&field, reason))?;
        if cidr.addr.is_unspecified() || cidr.addr.is_multicast() {
            return Err(invalid(
                &field,
                format!("{address:?} is not a unicast address"),
            ));
        }
        // The kernel keys IPv6 addresses by address alone, so the same
        // address twice (even with two prefixes) cannot both be added.
        if parsed.iter().any(|c: &Cidr| c.addr == cidr.addr) {
            return Err(invalid(&field, format!("{} is listed twice", cidr.addr)));
        }
        parsed.push(cidr);
    }
    Ok(LinkPlan {
        name: interface.name.clone(),
        field: format!("{field}.name"),
        mtu,
        addresses: (!parsed.is_empty()).then_some(parsed),
        up: interface.up,
    })
}

fn route_plan(field: &str, route: &Route) -> Result<RoutePlan, NetworkError> {
    let gateway = match route.gateway.as_str() {
        "" => None,
        text => Some(text.parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("{field}.gateway"),
                format!("{text:?} is not an IP address"),
            )
        })?),
    };
    let destination = match route.destination.as_str() {
        "" | "default" => {
            // Nothing else says whether this is the IPv4 or IPv6 default.
            let Some(gateway) = gateway else {
                return Err(invalid(
                    format!("{field}.gateway"),
                    "a default route needs a gateway (it gives the address family)",
                ));
            };
            let any = match gateway {
                IpAddr::V4(_) => IpAddr::from([0u8; 4]),
                IpAddr::V6(_) => IpAddr::from([0u8; 16]),
            };
            Cidr {
                addr: any,
                prefix: 0,
            }
        }
        text => {
            let field = format!("{field}.destination");
            let cidr = parse_cidr(text)
                .map_err(|reason| invalid(&field, format!("{reason}, or \"default\"")))?;
            let network = network_of(cidr);
            if network != cidr.addr {
                // The kernel refuses these; say what was probably meant.
                return Err(invalid(
                    field,
                    format!(
                        "{text:?} has host bits set (the network is {network}/{})",
                        cidr.prefix
                    ),
                ));
            }
            cidr
        }
    };
    if let Some(gateway) = gateway {
        if gateway.is_ipv4() != destination.addr.is_ipv4() {
            return Err(invalid(
                format!("{field}.gateway"),
                format!(
                    "{gateway} is not of the destination {}'s address family",
                    destination
                ),
            ));
        }
    }
    let device = match route.device.as_str() {
        "" if gateway.is_none() => {
            return Err(invalid(
                format!("{field}.device"),
                "a route without a gateway needs a device",
            ))
        }
        "" => None,
        name => {
            check_name(&format!("{field}.device"), name)?;
            Some(name.to_owned())
        }
    };
    Ok(RoutePlan {
        destination,
        gateway,
        device,
        field: format!("{field}.device"),
    })
}

/// A link name as the kernel accepts it (`dev_valid_name`).
fn check_name(field: &str, name: &str) -> Result<(), NetworkError> {
    let reason = if name.is_empty() {
        "a link name is required"
    } else if name.len() > MAX_NAME_BYTES {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not a link name"
    } else if name.contains(['/', ':']) || name.contains(|c: char| c.is_whitespace() || c == '\0') {
        "has '/', ':', a space or a NUL"
    } else {
        return Ok(());
    };
    Err(invalid(
        field,
        if name.is_empty() {
            reason.to_owned()
        } else {
            format!("{name:?} {reason}")
        },
    ))
}

/// Parses `ADDRESS/PREFIX`; the error is the reason, for the caller's field.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let not_cidr = || format!("{text:?} is not an address in CIDR notation");
    let (addr, prefix) = text.split_once('/').ok_or_else(not_cidr)?;
    let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
    // Digits only: u8's parser would take "+24".
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_cidr());
    }
    let prefix: u8 = prefix.parse().map_err(|_| not_cidr())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!(
            "{text:?}: the prefix length of an {} address is at most {max}",
            if addr.is_ipv4() { "IPv4" } else { "IPv6" }
        ));
    }
    Ok(Cidr { addr, prefix })
}

/// The address with its host bits cleared.
fn network_of(cidr: Cidr) -> IpAddr {
    match cidr.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.prefix))
                .unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.prefix))
                .unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    }
}
