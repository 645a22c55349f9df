//! ClusterIP and NodePort allocation.
//!
//! The allocators hold, in memory, which addresses and ports are taken; the server rebuilds them
//! from the stored Services at start. Admission takes what a Service needs before the write and
//! gives it back if the write fails or when the Service lets go of it.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use rand::Rng;

/// An IP prefix such as `10.96.0.0/12` or `fd00:10:96::/112`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.96.0.0/12)")]
    Syntax(String),
    #[error("{0:?} has host bits set")]
    HostBits(String),
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.into()))?;
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::Syntax(s.into()));
        }
        let c = Cidr { addr, prefix };
        if c.offset_of(addr) != Some(0) {
            return Err(CidrError::HostBits(s.into()));
        }
        Ok(c)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn to_bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

impl Cidr {
    fn host_bits(&self) -> u32 {
        to_bits(self.addr).1 - self.prefix as u32
    }

    /// The address's offset inside the prefix, or None when it lies outside.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return None;
        }
        let (base, _) = to_bits(self.addr);
        let (v, _) = to_bits(ip);
        let hb = self.host_bits();
        let mask = if hb >= 128 { 0 } else { !0u128 << hb };
        let net = base & mask;
        (v & mask == net).then_some(v - net)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }

    pub fn at(&self, offset: u128) -> IpAddr {
        let (base, width) = to_bits(self.addr);
        let v = base + offset;
        if width == 32 {
            IpAddr::V4((v as u32).into())
        } else {
            IpAddr::V6(v.into())
        }
    }
}

/// A set of taken slots `0..size`, one bit each.
#[derive(Debug)]
struct Bitmap {
    bits: Vec<u64>,
    size: usize,
    used: usize,
}

impl Bitmap {
    fn new(size: usize) -> Self {
        Bitmap {
            bits: vec![0; size.div_ceil(64)],
            size,
            used: 0,
        }
    }
    fn get(&self, i: usize) -> bool {
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize, on: bool) -> bool {
        let was = self.get(i);
        if was != on {
            self.bits[i / 64] ^= 1 << (i % 64);
            if on {
                self.used += 1
            } else {
                self.used -= 1
            }
        }
        was
    }
    /// Takes a free slot, starting the search at a random place so that a freed slot is not
    /// handed out again at once.
    fn take_any(&mut self) -> Option<usize> {
        if self.used >= self.size {
            return None;
        }
        let start = rand::rng().random_range(0..self.size);
        for n in 0..self.size {
            let i = (start + n) % self.size;
            if !self.set(i, true) {
                return Some(i);
            }
        }
        None
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("provided IP is not in the valid range. The range of valid IPs is {0}")]
    OutOfRange(String),
    #[error("provided IP is already allocated")]
    IpTaken,
    #[error("provided port is not in the valid range. The range of valid ports is {0}")]
    PortOutOfRange(String),
    #[error("provided port is already allocated")]
    PortTaken,
    #[error("range is full")]
    Full,
}

/// ClusterIPs from the service CIDR. The network address (and, for IPv4, the broadcast address)
/// are never handed out. Large IPv6 ranges are capped at 2^20 addresses, the first ones.
#[derive(Debug)]
pub struct IpAllocator {
    cidr: Cidr,
    map: Bitmap,
}

const MAX_IPS: u128 = 1 << 20;

impl IpAllocator {
    pub fn new(cidr: Cidr) -> Self {
        let total: u128 = if cidr.host_bits() >= 127 {
            u128::MAX
        } else {
            1u128 << cidr.host_bits()
        };
        let reserved_end = if cidr.addr.is_ipv4() && total > 2 {
            1
        } else {
            0
        };
        let usable = total.saturating_sub(1 + reserved_end).min(MAX_IPS);
        IpAllocator {
            cidr,
            map: Bitmap::new(usable as usize),
        }
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    fn slot(&self, ip: IpAddr) -> Result<usize, AllocError> {
        match self.cidr.offset_of(ip) {
            Some(o) if o >= 1 && o - 1 < self.map.size as u128 => Ok((o - 1) as usize),
            _ => Err(AllocError::OutOfRange(self.cidr.to_string())),
        }
    }

    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let slot = self.slot(ip)?;
        if self.map.set(slot, true) {
            return Err(AllocError::IpTaken);
        }
        Ok(())
    }

    pub fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        let slot = self.map.take_any().ok_or(AllocError::Full)?;
        Ok(self.cidr.at(slot as u128 + 1))
    }

    /// The lowest usable address, which the `kubernetes` Service takes.
    pub fn first(&self) -> IpAddr {
        self.cidr.at(1)
    }

    pub fn release(&mut self, ip: IpAddr) {
        if let Ok(slot) = self.slot(ip) {
            self.map.set(slot, false);
        }
    }
}

/// NodePorts from the node port range.
#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    map: Bitmap,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let size = (*range.end() as usize + 1).saturating_sub(*range.start() as usize);
        PortAllocator {
            range,
            map: Bitmap::new(size),
        }
    }

    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    fn range_text(&self) -> String {
        format!("{}-{}", self.range.start(), self.range.end())
    }

    pub fn allocate(&mut self, port: u16) -> Result<(), AllocError> {
        if !self.range.contains(&port) {
            return Err(AllocError::PortOutOfRange(self.range_text()));
        }
        if self.map.set((port - self.range.start()) as usize, true) {
            return Err(AllocError::PortTaken);
        }
        Ok(())
    }

    pub fn allocate_next(&mut self) -> Result<u16, AllocError> {
        let slot = self.map.take_any().ok_or(AllocError::Full)?;
        Ok(self.range.start() + slot as u16)
    }

    pub fn release(&mut self, port: u16) {
        if self.range.contains(&port) {
            self.map.set((port - self.range.start()) as usize, false);
        }
    }
}

/// Parses `30000-32767`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range (expected FIRST-LAST)"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: the range must be non-empty and start at 1 or above"
        ));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(c.contains("10.111.255.254".parse().unwrap()));
        assert!(!c.contains("10.112.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(
            "10.96.0.1/12".parse::<Cidr>(),
            Err(CidrError::HostBits("10.96.0.1/12".into()))
        );
        assert!("10.96.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn ip_allocation_skips_network_and_broadcast() {
        let mut a = IpAllocator::new("10.0.0.0/30".parse().unwrap());
        let mut got = vec![a.allocate_next().unwrap(), a.allocate_next().unwrap()];
        got.sort();
        assert_eq!(
            got,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(a.allocate_next(), Err(AllocError::Full));
        assert!(matches!(
            a.allocate("10.0.0.3".parse().unwrap()),
            Err(AllocError::OutOfRange(_))
        ));
        assert_eq!(
            a.allocate("10.0.0.1".parse().unwrap()),
            Err(AllocError::IpTaken)
        );
        a.release("10.0.0.1".parse().unwrap());
        assert_eq!(a.allocate("10.0.0.1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn port_allocation() {
        let mut p = PortAllocator::new(parse_port_range("30000-30001").unwrap());
        assert_eq!(p.allocate(30001), Ok(()));
        assert_eq!(p.allocate(30001), Err(AllocError::PortTaken));
        assert_eq!(p.allocate_next(), Ok(30000));
        assert_eq!(p.allocate_next(), Err(AllocError::Full));
        assert!(matches!(p.allocate(80), Err(AllocError::PortOutOfRange(_))));
        assert!(parse_port_range("32767-30000").is_err());
    }
}
