#!/usr/bin/env python3
"""Writes seeds for the api_messages target: a selector byte, then a protobuf message
encoded by hand (field numbers from the .proto files in proto/xray)."""
import os

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value

def typed(name, body):
    return field(1, name) + field(2, body)

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
users = {
    "vless": typed("xray.proxy.vless.Account", field(1, UUID) + field(3, "none")),
    "vmess": typed("xray.proxy.vmess.Account", field(1, UUID)),
    "trojan": typed("xray.proxy.trojan.Account", field(1, "a password")),
    "ss": typed("xray.proxy.shadowsocks.Account", field(1, "a password") + field(2, 5)),
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api_messages")
os.makedirs(here, exist_ok=True)
for name, account in users.items():
    user = field(1, 1) + field(2, name + "@example.com") + field(3, account)
    open(os.path.join(here, "user_" + name), "wb").write(b"\x03" + user)
# AddInboundRequest { inbound: InboundHandlerConfig { tag, receiver_settings, proxy_settings } }
receiver = typed("xray.app.proxyman.ReceiverConfig", field(1, field(1, 10085)) + field(2, field(1, bytes([127, 0, 0, 1]))))
proxy = typed("xray.proxy.vless.inbound.Config", field(1, field(2, "a@example.com") + field(3, users["vless"])) + field(2, "none"))
inbound = field(1, "in") + field(2, receiver) + field(3, proxy)
open(os.path.join(here, "add_inbound"), "wb").write(b"\x00" + field(1, inbound))
# AddOutboundRequest { outbound: OutboundHandlerConfig { tag, proxy_settings: freedom } }
outbound = field(1, "out") + field(3, typed("xray.proxy.freedom.Config", b""))
open(os.path.join(here, "add_outbound"), "wb").write(b"\x01" + field(1, outbound))
# AddRuleRequest { config: TypedMessage(router.Config { rule: [{ tag, domain... }] }) }
rule = field(1, "direct") + field(2, field(1, 2) + field(2, "example.com"))
open(os.path.join(here, "add_rule"), "wb").write(b"\x02" + field(1, typed("xray.app.router.Config", field(2, rule))))
