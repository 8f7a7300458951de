//! How `shardray link` hands links out: one user's only (`--user`), as a subscription (the
//! base64 list client apps import), or as QR codes drawn in the terminal (`--qr`). The links
//! themselves are the CLI's; this module only picks and renders them.

use base64::Engine;
use shardray_core::spec::{Config, InboundProtocol, UserSpec};

/// What `--format` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LinkFormat {
    /// One link a line.
    #[default]
    Plain,
    /// The subscription form v2rayN, v2rayNG, Shadowrocket, Clash's converters and sing-box's
    /// tools import: the standard base64 of the links joined by newlines.
    Subscription,
}

/// A copy of `config` whose inbounds list only the user with `email` (any ASCII case); `None`
/// if no inbound has that user.
pub fn only_user(config: &Config, email: &str) -> Option<Config> {
    let mut found = false;
    let mut out = config.without_users();
    for (inbound, original) in out.inbounds.iter_mut().zip(&config.inbounds) {
        let Some(clients) = original.protocol.clients() else { continue };
        let picked: Vec<UserSpec> = clients.iter().filter(|u| u.email.eq_ignore_ascii_case(email)).cloned().collect();
        found |= !picked.is_empty();
        match &mut inbound.protocol {
            InboundProtocol::Vless(v) => v.clients = picked,
            InboundProtocol::Trojan(t) => t.clients = picked,
            InboundProtocol::Vmess(v) => v.clients = picked,
            InboundProtocol::Shadowsocks(s) => s.clients = picked,
            InboundProtocol::Socks(p) => p.clients = picked,
            InboundProtocol::Http(p) => p.clients = picked,
            InboundProtocol::Dokodemo(_) => {}
        }
    }
    found.then_some(out)
}

/// The subscription body for `links`: base64 (standard alphabet, padded) of the links joined
/// by `\n`, as v2rayN writes and reads it.
pub fn subscription(links: &[String]) -> String {
    base64::engine::general_purpose::STANDARD.encode(links.join("\n"))
}

/// Why a link cannot be drawn.
#[derive(Debug)]
pub struct QrError(qrcode::types::QrError);

impl std::fmt::Display for QrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot draw the link as a QR code: {}", self.0)
    }
}

impl std::error::Error for QrError {}

/// Light modules of quiet zone around the code (the standard asks for 4).
const QUIET: usize = 4;

/// `link` as a QR code in Unicode half blocks, two module rows per text line, light modules
/// drawn (`█`, `▀`, `▄`) and dark ones left blank, so that on a terminal's dark background
/// the code shows dark on light, as scanners expect; with the quiet zone around it.
pub fn qr(link: &str) -> Result<String, QrError> {
    let code = qrcode::QrCode::new(link.as_bytes()).map_err(QrError)?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET;
    // Light outside the code and wherever the code is light.
    let light = |x: usize, y: usize| {
        if x < QUIET || y < QUIET || x >= width + QUIET || y >= width + QUIET {
            return true;
        }
        colors[(y - QUIET) * width + (x - QUIET)] == qrcode::Color::Light
    };
    let mut out = String::with_capacity(size * size.div_ceil(2) * 3 + size);
    for y in (0..size).step_by(2) {
        for x in 0..size {
            let bottom = y + 1 < size && light(x, y + 1);
            out.push(match (light(x, y), bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_is_base64_of_lines() {
        let links = ["vless://a@h:1?x=y#n".to_owned(), "trojan://p@h:2#m".to_owned()];
        let decoded = base64::engine::general_purpose::STANDARD.decode(subscription(&links)).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "vless://a@h:1?x=y#n\ntrojan://p@h:2#m");
    }

    #[test]
    fn qr_has_quiet_zone_and_square_shape() {
        let text = qr("vless://b831381d-6324-4d53-ad4f-8cda48b30811@127.0.0.1:10086?type=tcp#alice").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert_eq!(lines.len(), width.div_ceil(2));
        // The first two text lines are quiet zone: light all the way.
        assert!(lines[0].chars().all(|c| c == '█') && lines[1].chars().all(|c| c == '█'));
        // Versions grow 4 modules at a time from 21.
        assert_eq!((width - 2 * QUIET - 21) % 4, 0);
    }
}
