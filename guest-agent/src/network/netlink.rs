//! A checked plan carried out over rtnetlink, in the agent's network
//! namespace (a netlink socket acts in the namespace it was opened in).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::pin;

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio_stream::StreamExt;

use super::plan::{Cidr, LinkPlan, Plan, RoutePlan};
use super::NetworkError;

/// Looks up every link first, so a missing one changes nothing; then
/// configures the links in request order, then the routes (which may need
/// the links' new addresses to reach their gateways).
pub async fn apply(plan: &Plan) -> Result<(), NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkError::Netlink {
            operation: "opening a netlink socket".into(),
            source,
        })?;
    // Ends by itself once `handle` is dropped, even if this call is not
    // polled to the end; the abort only makes that immediate.
    let connection = tokio::spawn(connection);
    let result = apply_with(&handle, plan).await;
    connection.abort();
    result
}

async fn apply_with(handle: &Handle, plan: &Plan) -> Result<(), NetworkError> {
    let mut indexes = HashMap::new();
    for (name, field) in plan.link_names() {
        indexes.insert(name, link_index(handle, name, field).await?);
    }
    for link in &plan.links {
        configure(handle, link, indexes[link.name.as_str()]).await?;
    }
    for route in &plan.routes {
        let oif = route.device.as_deref().map(|d| indexes[d]);
        handle
            .route()
            .add(route_message(route, oif))
            .replace()
            .execute()
            .await
            .map_err(failed(format!("adding route {route}")))?;
    }
    Ok(())
}

async fn link_index(handle: &Handle, name: &str, field: &str) -> Result<u32, NetworkError> {
    let missing = || NetworkError::NoSuchLink {
        field: field.to_owned(),
        name: name.to_owned(),
    };
    let mut reply = pin!(handle.link().get().match_name(name).execute());
    match reply.next().await {
        Some(Ok(link)) => Ok(link.header.index),
        Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -libc::ENODEV => {
            Err(missing())
        }
        Some(Err(e)) => Err(failed(format!("looking up link {name}"))(e)),
        None => Err(missing()),
    }
}

/// MTU and up/down in one message, before the addresses: taking a link
/// down flushes its IPv6 addresses, so new ones must come after.
async fn configure(handle: &Handle, link: &LinkPlan, index: u32) -> Result<(), NetworkError> {
    let mut message = LinkUnspec::new_with_index(index);
    let mut operation = format!("setting link {}", link.name);
    if let Some(mtu) = link.mtu {
        message = message.mtu(mtu);
        operation += &format!(" mtu {mtu} and");
    }
    message = if link.up {
        message.up()
    } else {
        message.down()
    };
    operation += if link.up { " up" } else { " down" };
    handle
        .link()
        .set(message.build())
        .execute()
        .await
        .map_err(failed(operation))?;
    if let Some(wanted) = &link.addresses {
        replace_addresses(handle, link, index, wanted).await?;
    }
    Ok(())
}

/// Leaves the link with exactly `wanted`, touching only the difference, so
/// an address that stays is never briefly gone. IPv6 link-local addresses
/// stay too: the kernel makes them and neighbour discovery needs them.
///
/// New addresses go on before old ones come off: a link that loses its
/// last IPv4 address loses every IPv4 route through it. Deleting a
/// subnet's primary IPv4 address also deletes its secondaries (unless
/// `promote_secondaries` is set), so a wanted address that went with it is
/// added back at the end.
async fn replace_addresses(
    handle: &Handle,
    link: &LinkPlan,
    index: u32,
    wanted: &[Cidr],
) -> Result<(), NetworkError> {
    let current = addresses(handle, link, index).await?;
    // An address whose prefix changes comes off first: the kernel keys
    // IPv6 addresses by address alone.
    let fresh: Vec<Cidr> = wanted
        .iter()
        .filter(|w| !current.iter().any(|(c, _)| c.addr == w.addr))
        .copied()
        .collect();
    add_missing(handle, link, index, &fresh, &current).await?;
    let mut deleted = false;
    for (cidr, message) in &current {
        if wanted.contains(cidr) || is_link_local(cidr.addr) {
            continue;
        }
        match handle.address().del(message.clone()).execute().await {
            // Already gone with its primary: that is the goal.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
            result => result.map_err(failed(format!("deleting {cidr} from link {}", link.name)))?,
        }
        deleted = true;
    }
    if deleted {
        let left = addresses(handle, link, index).await?;
        add_missing(handle, link, index, wanted, &left).await?;
    }
    Ok(())
}

/// The link's addresses, with the messages that delete them.
async fn addresses(
    handle: &Handle,
    link: &LinkPlan,
    index: u32,
) -> Result<Vec<(Cidr, AddressMessage)>, NetworkError> {
    let mut found = Vec::new();
    let mut dump = pin!(handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute());
    while let Some(message) = dump.next().await {
        let message = message.map_err(failed(format!(
            "listing the addresses of link {}",
            link.name
        )))?;
        if let Some(cidr) = cidr_of(&message) {
            found.push((cidr, message));
        }
    }
    Ok(found)
}

async fn add_missing(
    handle: &Handle,
    link: &LinkPlan,
    index: u32,
    wanted: &[Cidr],
    current: &[(Cidr, AddressMessage)],
) -> Result<(), NetworkError> {
    for cidr in wanted {
        if !current.iter().any(|(c, _)| c == cidr) {
            handle
                .address()
                .add(index, cidr.addr, cidr.prefix)
                .execute()
                .await
                .map_err(failed(format!("adding {cidr} to link {}", link.name)))?;
        }
    }
    Ok(())
}

/// The link's own address: IFA_LOCAL where both are sent (IFA_ADDRESS is
/// then the peer of a point-to-point link), else IFA_ADDRESS.
fn cidr_of(message: &AddressMessage) -> Option<Cidr> {
    let attribute = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let addr = attribute(true).or_else(|| attribute(false))?;
    Some(Cidr {
        addr,
        prefix: message.header.prefix_len,
    })
}

fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// A main-table unicast route, as `ip route replace` would send it.
fn route_message(route: &RoutePlan, oif: Option<u32>) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<IpAddr>::new();
    if let Some(index) = oif {
        builder = builder.output_interface(index);
    }
    if route.gateway.is_none() {
        // Directly reachable: what iproute2 sets for a route without "via".
        builder = builder.scope(RouteScope::Link);
    }
    let mut message = builder.build();
    let destination = route.destination;
    message.header.address_family = match destination.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.destination_prefix_length = destination.prefix;
    if destination.prefix > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(destination.addr.into()));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(gateway.into()));
    }
    message
}

/// A failed netlink call as INTERNAL, naming the operation and carrying
/// the kernel's errno.
fn failed(operation: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |e| NetworkError::Netlink {
        operation,
        source: match e {
            rtnetlink::Error::NetlinkError(message) => message.to_io(),
            other => io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::plan::parse_cidr;

    fn plan(destination: &str, gateway: Option<&str>, device: Option<&str>) -> RoutePlan {
        RoutePlan {
            destination: parse_cidr(destination).unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            device: device.map(str::to_owned),
            field: "routes[0].device".into(),
        }
    }

    #[test]
    fn a_default_route_has_no_destination_attribute() {
        let message = route_message(&plan("::/0", Some("fd00::1"), None), None);
        assert_eq!(message.header.address_family, AddressFamily::Inet6);
        assert_eq!(message.header.destination_prefix_length, 0);
        assert_eq!(message.header.scope, RouteScope::Universe);
        assert_eq!(
            message.attributes,
            [RouteAttribute::Gateway(ip("fd00::1").into())]
        );
    }

    #[test]
    fn a_route_without_gateway_is_on_link_through_its_device() {
        let message = route_message(&plan("10.9.0.0/16", None, Some("eth0")), Some(7));
        assert_eq!(message.header.address_family, AddressFamily::Inet);
        assert_eq!(message.header.destination_prefix_length, 16);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert!(message.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(message
            .attributes
            .contains(&RouteAttribute::Destination(ip("10.9.0.0").into())));
        assert!(!message
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
    }

    #[test]
    fn an_address_is_its_local_attribute_when_it_has_a_peer() {
        let mut message = AddressMessage::default();
        message.header.prefix_len = 32;
        message.attributes = vec![
            AddressAttribute::Address(ip("10.0.0.2")),
            AddressAttribute::Local(ip("10.0.0.1")),
        ];
        assert_eq!(cidr_of(&message), Some(parse_cidr("10.0.0.1/32").unwrap()));
        message.attributes.remove(1);
        assert_eq!(cidr_of(&message), Some(parse_cidr("10.0.0.2/32").unwrap()));
        message.attributes.clear();
        assert_eq!(cidr_of(&message), None);
    }

    #[test]
    fn only_ipv6_fe80_addresses_are_link_local() {
        assert!(is_link_local(ip("fe80::1")));
        assert!(is_link_local(ip("febf::1")));
        assert!(!is_link_local(ip("fec0::1")));
        assert!(!is_link_local(ip("fd00::1")));
        assert!(!is_link_local(ip("169.254.0.1")));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }
}
