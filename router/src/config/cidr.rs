//! Sets of address ranges, as allow and deny lists and trusted proxies give
//! them: CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses,
//! merged into sorted, disjoint ranges so that a lookup is one binary search
//! however many blocks were listed. IPv4-mapped IPv6 addresses are looked up
//! as the IPv4 address they carry. A leaf.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// One configured block: `10.0.0.0/8`, or an address for `/32` (`/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            // Host bits set (`10.0.0.1/8`) are almost always a typo for
            // something narrower: refused rather than widened silently.
            if net.trunc() != net {
                return Err(format!("`{s}` has host bits set; the block is `{}`", net.trunc()));
            }
            return Ok(Self(net));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| format!("`{s}` is not an address or a CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32)"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Address ranges, for membership tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges, IPv4 ones in the
    /// IPv4-mapped part of the IPv6 space so one list holds both.
    ranges: Vec<(u128, u128)>,
    /// As configured, for display.
    blocks: Vec<Cidr>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

impl CidrSet {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        let mut ranges: Vec<(u128, u128)> = blocks
            .iter()
            .map(|Cidr(net)| (key(net.network()), key(net.broadcast())))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged.shrink_to_fit();
        Self { ranges: merged, blocks }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        // The last range starting at or before `k`.
        let i = self.ranges.partition_point(|&(start, _)| start <= k);
        i > 0 && k <= self.ranges[i - 1].1
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(blocks: &[&str]) -> CidrSet {
        CidrSet::new(
            blocks
                .iter()
                .map(|b| Cidr::try_from((*b).to_owned()).unwrap())
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_addresses_of_both_families() {
        let listed = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.0.0/16"]);
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "10.1.2.3",
            "192.0.2.7",
            "2001:db8::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(listed.contains(ip(inside)), "{inside}");
        }
        for outside in ["9.255.255.255", "11.0.0.0", "192.0.2.8", "2001:db9::", "::1", "::a00:1"] {
            assert!(!listed.contains(ip(outside)), "{outside}");
        }
        assert_eq!(listed.ranges.len(), 3, "10.1/16 merges into 10/8");
        assert!(!CidrSet::default().contains(ip("10.0.0.1")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("203.0.113.1")));
        assert!(!set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(set(&["::/0"]).contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "host.test", "", "10.0.0.0/"] {
            assert!(Cidr::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_thousand_blocks_stay_one_search() {
        let blocks: Vec<Cidr> = (0..1000u32)
            .map(|i| Cidr::try_from(format!("10.{}.{}.0/24", i / 256, i % 256)).unwrap())
            .collect();
        let set = CidrSet::new(blocks);
        assert!(set.contains(ip("10.3.231.9")));
        assert!(!set.contains(ip("10.3.232.9")));
        assert_eq!(set.ranges.len(), 1, "adjacent /24s merge");
    }
}
