//! API answers as JSON, in the shape `xray api` prints them: protobuf JSON field names,
//! TypedMessages opened into their message with the type under `_TypedMessage_`, empty
//! strings and absent messages left out. Unlike upstream, numbers are always printed, zero
//! included, so scripts need no defaults.

use prost::Message;
use serde_json::{json, Map, Value};
use shardray_proto::xray::app::proxyman;
use shardray_proto::xray::app::stats::command as stats_pb;
use shardray_proto::xray::common::net;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::core::{InboundHandlerConfig, OutboundHandlerConfig};
use shardray_proto::xray::proxy::vless;

use crate::convert::{message_type, Flavor};

/// An object from key-value pairs, leaving out nulls and empty strings.
fn object(fields: Vec<(&str, Value)>) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Value::Object(map)
}

/// A gRPC error as JSON.
pub(super) fn status(status: &tonic::Status) -> Value {
    json!({ "code": format!("{:?}", status.code()), "message": status.message() })
}

pub(super) fn stat(s: &stats_pb::Stat) -> Value {
    json!({ "name": s.name, "value": s.value })
}

/// GetStats / GetStatsOnline: `{"stat": {...}}`, or `{}` when the server sent none.
pub(super) fn stat_reply(reply: &stats_pb::GetStatsResponse) -> Value {
    match &reply.stat {
        Some(s) => json!({ "stat": stat(s) }),
        None => json!({}),
    }
}

/// GetUsersStats: `{"users": [{"email", "ips": [{"ip", "lastSeen"}], "traffic": {...}}]}`,
/// `traffic` only when the server sent it.
pub(super) fn users_stats(reply: &stats_pb::GetUsersStatsResponse) -> Value {
    let users: Vec<Value> = reply
        .users
        .iter()
        .map(|u| {
            let ips: Vec<Value> = u.ips.iter().map(|e| json!({ "ip": e.ip, "lastSeen": e.last_seen })).collect();
            let traffic = u.traffic.as_ref().map(|t| json!({ "uplink": t.uplink, "downlink": t.downlink }));
            object(vec![("email", json!(u.email)), ("ips", json!(ips)), ("traffic", traffic.unwrap_or(Value::Null))])
        })
        .collect();
    json!({ "users": users })
}

pub(super) fn sys_stats(s: &stats_pb::SysStatsResponse) -> Value {
    json!({
        "NumGoroutine": s.num_goroutine,
        "NumGC": s.num_gc,
        "Alloc": s.alloc,
        "TotalAlloc": s.total_alloc,
        "Sys": s.sys,
        "Mallocs": s.mallocs,
        "Frees": s.frees,
        "LiveObjects": s.live_objects,
        "PauseTotalNs": s.pause_total_ns,
        "Uptime": s.uptime,
    })
}

pub(super) fn user(u: &User) -> Value {
    object(vec![
        ("level", json!(u.level)),
        ("email", json!(u.email)),
        ("account", u.account.as_ref().map_or(Value::Null, typed)),
    ])
}

pub(super) fn inbound(h: &InboundHandlerConfig) -> Value {
    object(vec![
        ("tag", json!(h.tag)),
        ("receiverSettings", h.receiver_settings.as_ref().map_or(Value::Null, typed)),
        ("proxySettings", h.proxy_settings.as_ref().map_or(Value::Null, typed)),
    ])
}

pub(super) fn outbound(h: &OutboundHandlerConfig) -> Value {
    let mut out = object(vec![
        ("tag", json!(h.tag)),
        ("senderSettings", h.sender_settings.as_ref().map_or(Value::Null, typed)),
        ("proxySettings", h.proxy_settings.as_ref().map_or(Value::Null, typed)),
        ("comment", json!(h.comment)),
    ]);
    if h.expire != 0 {
        out["expire"] = json!(h.expire);
    }
    out
}

/// A TypedMessage opened into its message where this client knows the type; otherwise its
/// bytes in base64 under `value`.
pub(super) fn typed(t: &TypedMessage) -> Value {
    let known = match message_type(&t.r#type) {
        Ok((Flavor::Xray, name)) => known_message(name, &t.value),
        _ => None,
    };
    let mut v = known.unwrap_or_else(|| json!({ "value": base64(&t.value) }));
    if let Value::Object(map) = &mut v {
        map.insert("_TypedMessage_".to_owned(), json!(t.r#type));
    }
    v
}

fn known_message(name: &str, bytes: &[u8]) -> Option<Value> {
    Some(match name {
        "proxy.vless.Account" => {
            let a = vless::Account::decode(bytes).ok()?;
            object(vec![("id", json!(a.id)), ("flow", json!(a.flow)), ("encryption", json!(a.encryption))])
        }
        "proxy.vless.inbound.Config" => {
            let c = vless::inbound::Config::decode(bytes).ok()?;
            let fallbacks: Vec<Value> = c
                .fallbacks
                .iter()
                .map(|f| {
                    object(vec![
                        ("name", json!(f.name)),
                        ("alpn", json!(f.alpn)),
                        ("path", json!(f.path)),
                        ("type", json!(f.r#type)),
                        ("dest", json!(f.dest)),
                        ("xver", json!(f.xver)),
                    ])
                })
                .collect();
            object(vec![
                ("clients", json!(c.clients.iter().map(user).collect::<Vec<_>>())),
                ("fallbacks", json!(fallbacks)),
                ("decryption", json!(c.decryption)),
            ])
        }
        "app.proxyman.ReceiverConfig" => {
            let r = proxyman::ReceiverConfig::decode(bytes).ok()?;
            object(vec![
                ("portList", r.port_list.as_ref().map_or(Value::Null, port_list)),
                ("listen", r.listen.as_ref().map_or(Value::Null, ip_or_domain)),
            ])
        }
        _ => return None,
    })
}

fn port_list(p: &net::PortList) -> Value {
    let ranges: Vec<Value> = p.range.iter().map(|r| json!({ "From": r.from, "To": r.to })).collect();
    json!({ "range": ranges })
}

fn ip_or_domain(a: &net::IpOrDomain) -> Value {
    use net::ip_or_domain::Address;
    match &a.address {
        Some(Address::Domain(d)) => json!(d),
        Some(Address::Ip(ip)) => {
            if let Ok(v4) = <[u8; 4]>::try_from(&ip[..]) {
                json!(std::net::Ipv4Addr::from(v4).to_string())
            } else if let Ok(v6) = <[u8; 16]>::try_from(&ip[..]) {
                json!(std::net::Ipv6Addr::from(v6).to_string())
            } else {
                json!(base64(ip))
            }
        }
        None => Value::Null,
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn users_open_their_account_and_skip_empty_fields() {
        let account = vless::Account { id: "abc".into(), ..Default::default() };
        let u = User {
            level: 0,
            email: "a@b".into(),
            account: Some(TypedMessage { r#type: "xray.proxy.vless.Account".into(), value: account.encode_to_vec() }),
        };
        assert_eq!(
            user(&u),
            json!({
                "level": 0,
                "email": "a@b",
                "account": { "id": "abc", "_TypedMessage_": "xray.proxy.vless.Account" }
            })
        );
        let unknown = TypedMessage { r#type: "xray.proxy.trojan.Account".into(), value: vec![1, 2, 3] };
        assert_eq!(typed(&unknown), json!({ "value": "AQID", "_TypedMessage_": "xray.proxy.trojan.Account" }));
    }

    #[test]
    fn receiver_settings_show_address_and_ports() {
        let r = proxyman::ReceiverConfig {
            port_list: Some(net::PortList { range: vec![net::PortRange { from: 443, to: 443 }] }),
            listen: Some(net::IpOrDomain { address: Some(net::ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
            ..Default::default()
        };
        let t = TypedMessage { r#type: "xray.app.proxyman.ReceiverConfig".into(), value: r.encode_to_vec() };
        assert_eq!(
            typed(&t),
            json!({
                "portList": { "range": [{ "From": 443, "To": 443 }] },
                "listen": "127.0.0.1",
                "_TypedMessage_": "xray.app.proxyman.ReceiverConfig"
            })
        );
    }
}
