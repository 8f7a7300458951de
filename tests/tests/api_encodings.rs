//! The API reads every valid protobuf encoding a generated client may send, and refuses a field
//! number a message does not define, naming it: empty packed fields, explicit defaults, fields
//! in another order, unpacked repeated scalars, against the real binary.

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::router;
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_tests::api::{typed, vless_user, ApiClient};
use shardray_tests::{vless_config, Shardray, ALICE};
use tonic::Code;

const BOB: &str = "0a6d2e8c-55b7-4e3a-9d8f-25c6b1e7a001";

fn server() -> (Shardray, ApiClient) {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService", "RoutingService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

/// A length-delimited field `number` holding `bytes`.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(number, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field `number` holding `value`.
fn varint_field(number: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(number, WireType::Varint, &mut out);
    encode_varint(value, &mut out);
    out
}

/// The top-level fields of an encoded message, each as its own bytes, in order.
fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let start = bytes;
        let (_, wire) = prost::encoding::decode_key(&mut bytes).unwrap();
        match wire {
            WireType::Varint => {
                prost::encoding::decode_varint(&mut bytes).unwrap();
            }
            WireType::LengthDelimited => {
                let len = prost::encoding::decode_varint(&mut bytes).unwrap() as usize;
                bytes = &bytes[len..];
            }
            WireType::ThirtyTwoBit => bytes = &bytes[4..],
            WireType::SixtyFourBit => bytes = &bytes[8..],
            other => panic!("unexpected wire type {other:?}"),
        }
        out.push(start[..start.len() - bytes.len()].to_vec());
    }
    out
}

fn add_rule(api: &ApiClient, config_bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let config = TypedMessage { r#type: "xray.app.router.Config".into(), value: config_bytes };
    let req = pb::AddRuleRequest { config: Some(config), should_append: true };
    api.block_on(pb::routing_service_client::RoutingServiceClient::new(api.channel()).add_rule(req)).map(|_| ())
}

/// A rule as a generated client writes it, then with extra bytes appended to its encoding.
fn rule_bytes(tag: &str, extra: &[u8]) -> Vec<u8> {
    let rule = router::RoutingRule {
        rule_tag: tag.into(),
        target_tag: Some(router::routing_rule::TargetTag::Tag("direct".into())),
        inbound_tag: vec!["vless-in".into()],
        ..Default::default()
    };
    let mut bytes = rule.encode_to_vec();
    bytes.extend_from_slice(extra);
    bytes
}

#[test]
fn add_rule_takes_every_valid_encoding_and_names_an_unknown_field() {
    let (_server, api) = server();
    // The panel's case: an empty `networks` list (field 13, packed, no elements: `6a 00`).
    add_rule(&api, field(2, &rule_bytes("empty-packed", &[0x6a, 0x00]))).expect("empty packed field");
    // The same list unpacked, one element (TCP = 2) as its own varint record.
    add_rule(&api, field(2, &rule_bytes("unpacked", &varint_field(13, 2)))).expect("unpacked repeated enum");
    // An explicit default: domain_strategy (field 1 of Config) written as 0.
    let mut explicit = varint_field(1, 0);
    explicit.extend(field(2, &rule_bytes("explicit-default", &[])));
    add_rule(&api, explicit).expect("explicit default");
    // The rule's fields in reverse order.
    let reversed: Vec<u8> = records(&rule_bytes("reversed", &[])).into_iter().rev().flatten().collect();
    add_rule(&api, field(2, &reversed)).expect("fields in another order");
    let listed = api
        .block_on(
            pb::routing_service_client::RoutingServiceClient::new(api.channel()).list_rule(pb::ListRuleRequest {}),
        )
        .unwrap()
        .into_inner();
    let tags: Vec<String> = listed.rules.into_iter().map(|r| r.rule_tag).collect();
    for tag in ["empty-packed", "unpacked", "explicit-default", "reversed"] {
        assert!(tags.iter().any(|t| t == tag), "{tag} missing from {tags:?}");
    }

    // A field number RoutingRule does not define is refused, by number and with its place.
    let err = add_rule(&api, field(2, &rule_bytes("unknown", &varint_field(99, 1)))).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("rule[0]: field number 99 is not defined in xray.app.router.RoutingRule"),
        "{err:?}"
    );
}

#[test]
fn user_operations_take_every_valid_encoding_and_name_an_unknown_field() {
    let (_server, api) = server();
    let add = |op_bytes: Vec<u8>| {
        api.alter(
            "vless-in",
            TypedMessage { r#type: "xray.app.proxyman.command.AddUserOperation".into(), value: op_bytes },
        )
    };
    // The user with an explicit level 0 (field 1), its fields reversed, inside the operation.
    let user = vless_user("bob@example.com", BOB, 0).encode_to_vec();
    let mut user_bytes = varint_field(1, 0);
    user_bytes.extend(records(&user).into_iter().rev().flatten());
    add(field(1, &user_bytes)).expect("explicit default and another order");
    assert!(api.user_emails("vless-in").unwrap().contains(&"bob@example.com".to_owned()));

    // An unknown field inside the account (a VLESS Account has fields 1..=3).
    let mut account =
        shardray_proto::xray::proxy::vless::Account { id: BOB.into(), ..Default::default() }.encode_to_vec();
    account.extend(varint_field(42, 7));
    let carol = shardray_proto::xray::common::protocol::User {
        email: "carol@example.com".into(),
        level: 0,
        account: Some(TypedMessage { r#type: "xray.proxy.vless.Account".into(), value: account }),
    };
    let op = handler::AddUserOperation { user: Some(carol) };
    let err = api.alter("vless-in", typed("xray.app.proxyman.command.AddUserOperation", &op)).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("field number 42 is not defined in xray.proxy.vless.Account"), "{err:?}");

    // An unknown field in the operation itself.
    let mut op_bytes = op.encode_to_vec();
    op_bytes.extend(varint_field(5, 1));
    let err = add(op_bytes).unwrap_err();
    assert!(
        err.message().contains("field number 5 is not defined in xray.app.proxyman.command.AddUserOperation"),
        "{err:?}"
    );
}
