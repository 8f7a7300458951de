//! `geoip:` and `geosite:` (and `ext:FILE:CODE`) in routing rules, from V2Ray/Xray `.dat`
//! files: a protobuf list of entries, each a code with its CIDRs or domains.
//!
//! A rule's entry is expanded at load into the plain CIDRs and domain matchers the router
//! already indexes, so the shards never see a `.dat` file. Files are found where Xray looks
//! and read once per process; only the entries a config names are decoded.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prost::Message;
use shardray_core::spec::DomainMatcher;
use shardray_proto::xray::common::geodata as pb;

/// The directories searched for `geoip.dat`, `geosite.dat` and `ext:` files, in Xray's order.
pub fn asset_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["XRAY_LOCATION_ASSET", "V2RAY_LOCATION_ASSET", "SHARDRAY_LOCATION_ASSET"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(dir));
        }
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)) {
        dirs.push(dir);
    }
    dirs.extend(
        ["/usr/local/share/xray", "/usr/share/xray", "/usr/local/share/v2ray", "/usr/share/v2ray"].map(PathBuf::from),
    );
    dirs
}

/// The bytes of asset `name`, read once per process.
fn asset(name: &str) -> Result<Arc<Vec<u8>>, String> {
    static FILES: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    if let Some(bytes) = files.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
        return Ok(bytes.clone());
    }
    let dirs = asset_dirs();
    let path = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("{name} not found (looked in {}; XRAY_LOCATION_ASSET names another directory)", looked.join(", "))
    })?;
    let bytes = Arc::new(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    files.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), bytes.clone());
    Ok(bytes)
}

/// Reads a protobuf varint at the front of `buf`: the value and its length.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The length-delimited fields of a message, as (field number, bytes); other wire types are
/// skipped.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), &'static str>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let step = (|| {
            let (key, n) = varint(buf).ok_or("truncated key")?;
            buf = &buf[n..];
            let field = key >> 3;
            let len = match key & 7 {
                0 => varint(buf).ok_or("truncated varint")?.1,
                1 => 8,
                5 => 4,
                2 => {
                    let (len, n) = varint(buf).ok_or("truncated length")?;
                    buf = &buf[n..];
                    let len = usize::try_from(len).map_err(|_| "length too large")?;
                    if len > buf.len() {
                        return Err("truncated field");
                    }
                    let (value, rest) = buf.split_at(len);
                    buf = rest;
                    return Ok(Some((field, value)));
                }
                _ => return Err("unknown wire type"),
            };
            if len > buf.len() {
                return Err("truncated field");
            }
            buf = &buf[len..];
            Ok(None)
        })();
        match step {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => Some(Ok((0, &[][..]))),
            Err(e) => {
                buf = &[];
                Some(Err(e))
            }
        }
    })
    .filter(|f| !matches!(f, Ok((0, _))))
}

/// The bytes of the list entry whose code (field 1) is `code`, in any case.
fn entry<'a>(file: &'a [u8], code: &str) -> Result<Option<&'a [u8]>, &'static str> {
    for item in fields(file) {
        let (field, entry) = item?;
        if field != 1 {
            continue;
        }
        for inner in fields(entry) {
            let (f, value) = inner?;
            if f == 1 {
                if std::str::from_utf8(value).is_ok_and(|c| c.eq_ignore_ascii_case(code)) {
                    return Ok(Some(entry));
                }
                break;
            }
        }
    }
    Ok(None)
}

/// The CIDRs of `code` in `file` (`geoip.dat` or an `ext:` file); with `negate` (`geoip:!cn`)
/// every address outside them instead.
pub fn geoip(file: &str, code: &str, negate: bool) -> Result<Vec<IpNet>, String> {
    let bytes = asset(file)?;
    let raw = entry(&bytes, code).map_err(|e| format!("{file}: {e}"))?;
    let raw = raw.ok_or_else(|| format!("{file} has no entry {code:?}"))?;
    let geo = pb::GeoIp::decode(raw).map_err(|e| format!("{file}: entry {code:?}: {e}"))?;
    let mut nets = Vec::with_capacity(geo.cidr.len());
    for c in &geo.cidr {
        let prefix = u8::try_from(c.prefix).unwrap_or(u8::MAX);
        let net = match c.ip.len() {
            4 => Ipv4Net::new(Ipv4Addr::from(<[u8; 4]>::try_from(&c.ip[..]).expect("4 bytes")), prefix).map(IpNet::V4),
            16 => {
                Ipv6Net::new(Ipv6Addr::from(<[u8; 16]>::try_from(&c.ip[..]).expect("16 bytes")), prefix).map(IpNet::V6)
            }
            _ => return Err(format!("{file}: entry {code:?} has an address of {} bytes", c.ip.len())),
        };
        nets.push(net.map_err(|_| format!("{file}: entry {code:?} has prefix {}", c.prefix))?.trunc());
    }
    // A file's own reverse flag and the rule's `!` each turn the set inside out.
    if negate != geo.reverse_match {
        nets = complement(&nets);
    }
    Ok(nets)
}

/// Every address not in `nets`, as CIDRs, per family.
fn complement(nets: &[IpNet]) -> Vec<IpNet> {
    let mut v4: Vec<(u128, u128)> = Vec::new();
    let mut v6: Vec<(u128, u128)> = Vec::new();
    for net in IpNet::aggregate(&nets.to_vec()) {
        let (lo, hi) = match net {
            IpNet::V4(n) => (u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        };
        if net.addr().is_ipv4() {
            v4.push((lo, hi))
        } else {
            v6.push((lo, hi))
        }
    }
    let mut out = Vec::new();
    for (ranges, max, bits) in [(v4, u128::from(u32::MAX), 32u32), (v6, u128::MAX, 128u32)] {
        let mut next = Some(0u128);
        for (lo, hi) in ranges {
            if let Some(from) = next {
                if lo > from {
                    push_range(&mut out, from, lo - 1, bits);
                }
            }
            next = hi.checked_add(1).filter(|&n| n <= max);
        }
        if let Some(from) = next {
            push_range(&mut out, from, max, bits);
        }
    }
    out
}

/// The CIDRs covering `lo..=hi` exactly, in an address family of `bits` bits.
fn push_range(out: &mut Vec<IpNet>, mut lo: u128, hi: u128, bits: u32) {
    // The last offset in a block of 2^k addresses.
    let span = |k: u32| if k >= 128 { u128::MAX } else { (1u128 << k) - 1 };
    loop {
        // The largest block aligned at `lo` that does not pass `hi`.
        let mut k = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
        while k > 0 && span(k) > hi - lo {
            k -= 1;
        }
        let prefix = u8::try_from(bits - k).expect("small");
        out.push(if bits == 32 {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(lo as u32), prefix).expect("valid prefix"))
        } else {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(lo), prefix).expect("valid prefix"))
        });
        let end = lo + span(k);
        if end >= hi {
            return;
        }
        lo = end + 1;
    }
}

/// The domain matchers of `code` in `file` (`geosite.dat` or an `ext:` file), keeping only
/// domains that carry every attribute in `attrs` (`geosite:google@cn`).
pub fn geosite(file: &str, code: &str, attrs: &[&str]) -> Result<Vec<DomainMatcher>, String> {
    let bytes = asset(file)?;
    let raw = entry(&bytes, code).map_err(|e| format!("{file}: {e}"))?;
    let raw = raw.ok_or_else(|| format!("{file} has no entry {code:?}"))?;
    let site = pb::GeoSite::decode(raw).map_err(|e| format!("{file}: entry {code:?}: {e}"))?;
    let mut out = Vec::with_capacity(site.domain.len());
    for d in site.domain {
        let has = |attr: &&str| d.attribute.iter().any(|a| a.key.eq_ignore_ascii_case(attr));
        if !attrs.iter().all(has) {
            continue;
        }
        let value = d.value.to_ascii_lowercase();
        out.push(match pb::domain::Type::try_from(d.r#type) {
            Ok(pb::domain::Type::Full) => DomainMatcher::Full(value),
            Ok(pb::domain::Type::Domain) => DomainMatcher::Domain(value),
            Ok(pb::domain::Type::Regex) => DomainMatcher::Regex(d.value),
            Ok(pb::domain::Type::Substr) | Err(_) => DomainMatcher::Keyword(value),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_complement_covers_exactly_what_the_set_leaves_out() {
        let set = nets(&["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]);
        let out = complement(&set);
        let inside = |ip: &str| out.iter().any(|n| n.contains(&ip.parse::<std::net::IpAddr>().unwrap()));
        for ip in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.0.255",
            "192.168.2.0",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "2001:db9::",
        ] {
            assert!(inside(ip), "{ip} should be outside the set");
        }
        for ip in ["10.1.2.3", "192.168.1.7", "2001:db8::1"] {
            assert!(!inside(ip), "{ip} is in the set");
        }
        assert_eq!(complement(&[]), nets(&["0.0.0.0/0", "::/0"]));
        assert_eq!(complement(&nets(&["0.0.0.0/0", "::/0"])), Vec::<IpNet>::new());
        assert_eq!(complement(&nets(&["0.0.0.0/1", "::/0"])), nets(&["128.0.0.0/1"]));
    }

    #[test]
    fn entries_are_found_by_code_without_decoding_the_rest() {
        let list = pb::GeoIpList {
            entry: vec![
                pb::GeoIp {
                    code: "AA".into(),
                    cidr: vec![pb::Cidr { ip: vec![1, 2, 3, 0], prefix: 24 }],
                    ..Default::default()
                },
                pb::GeoIp {
                    code: "BB".into(),
                    cidr: vec![pb::Cidr { ip: vec![5, 0, 0, 0], prefix: 8 }],
                    ..Default::default()
                },
            ],
        };
        let bytes = list.encode_to_vec();
        let raw = entry(&bytes, "bb").unwrap().unwrap();
        assert_eq!(pb::GeoIp::decode(raw).unwrap().code, "BB");
        assert_eq!(entry(&bytes, "cc").unwrap(), None);
        assert!(entry(&bytes[..bytes.len() - 1], "zz").is_err(), "a truncated file is an error");
    }
}
