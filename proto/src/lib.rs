//! The management API's messages and services, generated from `proto/` at build time.
//!
//! The module tree mirrors the protobuf packages (`xray.app.proxyman.command`
//! is [`xray::app::proxyman::command`]), so gRPC paths and TypedMessage type
//! names are upstream Xray-core's. The V2Ray names (`v2ray.core.*`) are served
//! from these same types by rewriting paths and type names; where a V2Ray-only
//! field could be added without a number collision it is in these messages
//! (see the comments in the .proto files).
#![allow(missing_docs, clippy::all)]

/// Serialized `google.protobuf.FileDescriptorSet` of every file in `proto/`
/// (and their imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// `shardray.*` packages: our own additions, in envelopes upstream clients already know.
pub mod shardray {
    /// `shardray.app`
    pub mod app {
        /// `shardray.app.proxyman`
        pub mod proxyman {
            /// `shardray.app.proxyman.command`: extra AlterInbound operations.
            pub mod command {
                tonic::include_proto!("shardray.app.proxyman.command");
            }
        }
        /// `shardray.app.events`
        pub mod events {
            /// `shardray.app.events.command`: user events and quotas.
            pub mod command {
                tonic::include_proto!("shardray.app.events.command");
            }
        }
        /// `shardray.app.reload`
        pub mod reload {
            /// `shardray.app.reload.command`: config reload.
            pub mod command {
                tonic::include_proto!("shardray.app.reload.command");
            }
        }
        /// `shardray.app.stats`
        pub mod stats {
            /// `shardray.app.stats.command`: delta counters for several readers.
            pub mod command {
                tonic::include_proto!("shardray.app.stats.command");
            }
        }
    }
    /// `shardray.compat.v2ray`: v2fly's forms of messages numbered differently from Xray's.
    pub mod compat {
        /// v2fly's ReceiverConfig, TLS config, dokodemo-door config and VLESS account.
        pub mod v2ray {
            tonic::include_proto!("shardray.compat.v2ray");
        }
    }
}

/// `xray.*` packages.
pub mod xray {
    /// `xray.core`: handler envelopes and the top-level config.
    pub mod core {
        tonic::include_proto!("xray.core");
    }

    /// `xray.common.*`
    pub mod common {
        /// `xray.common.serial`: TypedMessage.
        pub mod serial {
            tonic::include_proto!("xray.common.serial");
        }
        /// `xray.common.protocol`: User, SecurityConfig, ServerEndpoint.
        pub mod protocol {
            tonic::include_proto!("xray.common.protocol");
        }
        /// `xray.common.net`: IPOrDomain, PortRange/PortList, Network.
        pub mod net {
            tonic::include_proto!("xray.common.net");
        }
        /// `xray.common.geodata`: domain and IP matchers.
        pub mod geodata {
            tonic::include_proto!("xray.common.geodata");
        }
    }

    /// `xray.app.*`
    pub mod app {
        /// `xray.app.proxyman`: ReceiverConfig, SenderConfig, ...
        pub mod proxyman {
            tonic::include_proto!("xray.app.proxyman");
            /// `xray.app.proxyman.command`: HandlerService.
            pub mod command {
                tonic::include_proto!("xray.app.proxyman.command");
            }
        }
        /// `xray.app.log`
        pub mod log {
            /// `xray.app.log.command`: LoggerService.
            pub mod command {
                tonic::include_proto!("xray.app.log.command");
            }
        }
        /// `xray.app.router`: RoutingRule, BalancingRule, Config.
        pub mod router {
            tonic::include_proto!("xray.app.router");
            /// `xray.app.router.command`: RoutingService.
            pub mod command {
                tonic::include_proto!("xray.app.router.command");
            }
        }
        /// `xray.app.stats`
        pub mod stats {
            /// `xray.app.stats.command`: StatsService.
            pub mod command {
                tonic::include_proto!("xray.app.stats.command");
            }
        }
    }

    /// `xray.transport.*`
    pub mod transport {
        /// `xray.transport.internet`: StreamConfig, ProxyConfig, SocketConfig.
        pub mod internet {
            tonic::include_proto!("xray.transport.internet");
            /// `xray.transport.internet.tls`: TLS settings.
            pub mod tls {
                tonic::include_proto!("xray.transport.internet.tls");
            }
            /// `xray.transport.internet.websocket`: WebSocket settings.
            pub mod websocket {
                tonic::include_proto!("xray.transport.internet.websocket");
            }
            /// `xray.transport.internet.httpupgrade`: HTTPUpgrade settings.
            pub mod httpupgrade {
                tonic::include_proto!("xray.transport.internet.httpupgrade");
            }
            /// `xray.transport.internet.reality`: REALITY settings.
            pub mod reality {
                tonic::include_proto!("xray.transport.internet.reality");
            }
            /// `xray.transport.internet.grpc`
            pub mod grpc {
                /// `xray.transport.internet.grpc.encoding`: gRPC transport settings.
                pub mod encoding {
                    tonic::include_proto!("xray.transport.internet.grpc.encoding");
                }
            }
            /// `xray.transport.internet.splithttp`: XHTTP settings.
            pub mod splithttp {
                tonic::include_proto!("xray.transport.internet.splithttp");
            }
        }
    }

    /// `xray.proxy.*`: accounts and protocol settings.
    pub mod proxy {
        /// `xray.proxy.vless`: Account.
        pub mod vless {
            tonic::include_proto!("xray.proxy.vless");
            /// `xray.proxy.vless.inbound`: Config, Fallback.
            pub mod inbound {
                tonic::include_proto!("xray.proxy.vless.inbound");
            }
            /// `xray.proxy.vless.outbound`: Config (one server endpoint).
            pub mod outbound {
                tonic::include_proto!("xray.proxy.vless.outbound");
            }
        }
        /// `xray.proxy.vmess`: Account.
        pub mod vmess {
            tonic::include_proto!("xray.proxy.vmess");
            /// `xray.proxy.vmess.inbound`: Config (users, default level; v2fly's detour).
            pub mod inbound {
                tonic::include_proto!("xray.proxy.vmess.inbound");
            }
            /// `xray.proxy.vmess.outbound`: Config (one receiver served).
            pub mod outbound {
                tonic::include_proto!("xray.proxy.vmess.outbound");
            }
        }
        /// `xray.proxy.trojan`: Account, ServerConfig, ClientConfig.
        pub mod trojan {
            tonic::include_proto!("xray.proxy.trojan");
        }
        /// `xray.proxy.socks`: Account, AuthType, ServerConfig, ClientConfig.
        pub mod socks {
            tonic::include_proto!("xray.proxy.socks");
        }
        /// `xray.proxy.http`: Account, ServerConfig, Header, ClientConfig.
        pub mod http {
            tonic::include_proto!("xray.proxy.http");
        }
        /// `xray.proxy.shadowsocks`: Account, CipherType.
        pub mod shadowsocks {
            tonic::include_proto!("xray.proxy.shadowsocks");
        }
        /// `xray.proxy.shadowsocks_2022`: Account, server configs.
        pub mod shadowsocks_2022 {
            tonic::include_proto!("xray.proxy.shadowsocks_2022");
        }
        /// `xray.proxy.freedom`: Config.
        pub mod freedom {
            tonic::include_proto!("xray.proxy.freedom");
        }
        /// `xray.proxy.dns`: Config (the `dns` outbound).
        pub mod dns {
            tonic::include_proto!("xray.proxy.dns");
        }
        /// `xray.proxy.blackhole`: Config.
        pub mod blackhole {
            tonic::include_proto!("xray.proxy.blackhole");
        }
        /// `xray.proxy.dokodemo`: Config.
        pub mod dokodemo {
            tonic::include_proto!("xray.proxy.dokodemo");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::xray::app::proxyman::command::AddUserOperation;
    use super::xray::common::protocol::User;
    use super::xray::common::serial::TypedMessage;
    use super::xray::proxy::vless::Account;
    use prost::Message;

    #[test]
    fn typed_message_round_trips_add_user_with_vless_account() {
        let account = Account {
            id: "66ad4540-b58c-4ad2-9926-ea63445a9b57".into(),
            flow: "xtls-rprx-vision".into(),
            ..Default::default()
        };
        let op = AddUserOperation {
            user: Some(User {
                level: 1,
                email: "alice@example.com".into(),
                account: Some(TypedMessage {
                    r#type: "xray.proxy.vless.Account".into(),
                    value: account.encode_to_vec(),
                }),
            }),
        };
        let envelope =
            TypedMessage { r#type: "xray.app.proxyman.command.AddUserOperation".into(), value: op.encode_to_vec() };

        let bytes = envelope.encode_to_vec();
        let back = TypedMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.r#type, "xray.app.proxyman.command.AddUserOperation");
        let op_back = AddUserOperation::decode(back.value.as_slice()).unwrap();
        assert_eq!(op_back, op);
        let user = op_back.user.unwrap();
        assert_eq!(user.email, "alice@example.com");
        let acc = user.account.unwrap();
        assert_eq!(acc.r#type, "xray.proxy.vless.Account");
        assert_eq!(Account::decode(acc.value.as_slice()).unwrap(), account);
    }

    #[test]
    fn vless_account_wire_numbers_match_upstream() {
        // id = 1 (tag 0x0a), flow = 2 (tag 0x12), encryption = 3 (tag 0x1a).
        let acc = Account { id: "a".into(), flow: "b".into(), encryption: "c".into(), ..Default::default() };
        assert_eq!(acc.encode_to_vec(), vec![0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 1, b'c']);
    }

    #[test]
    fn service_names_match_upstream() {
        use tonic::server::NamedService;
        type Handler = super::xray::app::proxyman::command::handler_service_server::HandlerServiceServer<()>;
        type Stats = super::xray::app::stats::command::stats_service_server::StatsServiceServer<()>;
        type Logger = super::xray::app::log::command::logger_service_server::LoggerServiceServer<()>;
        type Routing = super::xray::app::router::command::routing_service_server::RoutingServiceServer<()>;
        assert_eq!(<Handler as NamedService>::NAME, "xray.app.proxyman.command.HandlerService");
        assert_eq!(<Stats as NamedService>::NAME, "xray.app.stats.command.StatsService");
        assert_eq!(<Logger as NamedService>::NAME, "xray.app.log.command.LoggerService");
        assert_eq!(<Routing as NamedService>::NAME, "xray.app.router.command.RoutingService");
    }

    #[test]
    fn descriptor_set_lists_every_package() {
        let set = prost_types_free_decode(super::FILE_DESCRIPTOR_SET);
        for pkg in [
            "xray.core",
            "xray.common.serial",
            "xray.app.proxyman.command",
            "xray.app.router.command",
            "xray.proxy.shadowsocks_2022",
            "xray.transport.internet.tls",
            "xray.transport.internet.websocket",
            "xray.transport.internet.httpupgrade",
            "xray.transport.internet.grpc.encoding",
            "xray.transport.internet.splithttp",
        ] {
            assert!(set.iter().any(|p| p == pkg), "missing package {pkg}");
        }
    }

    /// Reads the `package` of each FileDescriptorProto without pulling in
    /// prost-types: FileDescriptorSet.file = 1, FileDescriptorProto.package = 2.
    fn prost_types_free_decode(bytes: &[u8]) -> Vec<String> {
        #[derive(Clone, PartialEq, prost::Message)]
        struct File {
            #[prost(string, optional, tag = "2")]
            package: Option<String>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Set {
            #[prost(message, repeated, tag = "1")]
            file: Vec<File>,
        }
        Set::decode(bytes).unwrap().file.into_iter().filter_map(|f| f.package).collect()
    }
}
