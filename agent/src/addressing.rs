//! How addresses are written and derived: IPv4 CIDR and MAC text as IMDS, EC2 and annotations
//! give them, and a subnet's router address.

use std::net::Ipv4Addr;

/// "10.0.1.0/24" → (10.0.1.0, 24); None for anything else.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.trim().split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr.parse().ok()?, len))
}

/// "0a:1b:2c:3d:4e:5f": six two-digit hex bytes, nothing else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The subnet router: the subnet's base address + 1, as in every VPC.
pub fn gateway((base, len): (Ipv4Addr, u8)) -> Ipv4Addr {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from((u32::from(base) & mask) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_subnets_base_plus_one() {
        assert_eq!(
            gateway(parse_cidr("10.0.2.0/24").unwrap()),
            Ipv4Addr::new(10, 0, 2, 1)
        );
        assert_eq!(
            gateway(parse_cidr("10.0.2.77/20").unwrap()),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn macs_and_cidrs_parse_or_say_no() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:9c"),
            Some([2, 0x0a, 0xff, 0, 1, 0x9c])
        );
        assert_eq!(parse_mac("02:0a:ff:00:01"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
