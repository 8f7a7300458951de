//! The API's decoding of what a client sends, on any bytes: the first byte picks the request
//! (AddInbound, AddOutbound, AddRule, a user of each protocol), the rest is its protobuf
//! encoding, decoded strictly and converted as the handlers do. An error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardray_control::convert::{decode_known, inbound::inbound_json, routes, user_spec};
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::router::command as router;
use shardray_proto::xray::common::protocol::User;

const PROTOCOLS: [&str; 7] = ["vless", "vmess", "trojan", "shadowsocks", "shadowsocks_2022", "socks", "http"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    match pick % 4 {
        0 => {
            let Ok(req) = decode_known::<handler::AddInboundRequest>(bytes, "xray.app.proxyman.command.AddInboundRequest")
            else {
                return;
            };
            if let Some(config) = req.inbound {
                if let Ok(json) = inbound_json(&config) {
                    let _ = shardray_control::config::load_inbound(json, "inbound");
                }
            }
        }
        1 => {
            let name = "xray.app.proxyman.command.AddOutboundRequest";
            if let Ok(handler::AddOutboundRequest { outbound: Some(config) }) = decode_known(bytes, name) {
                let _ = routes::outbound_spec(&config);
            }
        }
        2 => {
            let name = "xray.app.router.command.AddRuleRequest";
            if let Ok(router::AddRuleRequest { config: Some(config), .. }) = decode_known(bytes, name) {
                let _ = routes::routing_specs(&config);
            }
        }
        _ => {
            if let Ok(user) = decode_known::<User>(bytes, "xray.common.protocol.User") {
                for protocol in PROTOCOLS {
                    let _ = user_spec(&user, protocol);
                }
            }
        }
    }
});
