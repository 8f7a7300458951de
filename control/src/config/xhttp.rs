//! Validates `xhttpSettings` / `splithttpSettings` as Xray's `SplitHTTPConfig.Build`
//! (infra/conf/transport_method.go) does: `extra` replaces every key but `host`, `path` and
//! `mode`; defaults are filled in; errors name the field.

use serde_json::Value;
use shardray_core::spec::{XhttpSpec, XmuxSpec};
use shardray_wire::xhttp::{normalize_path, Mode, Padding, PaddingMethod, Placement, Range, Settings};

use super::error::ConfigError;
use super::raw::{RawXhttpSettings, RawXmux};
use super::validate::deserialize_at;

/// The settings object in force and its key: `xhttpSettings` wins over `splithttpSettings`,
/// as in Xray.
pub(super) fn pick(xhttp: Option<Value>, splithttp: Option<Value>) -> Option<(&'static str, Value)> {
    match (xhttp, splithttp) {
        (Some(v), _) => Some(("xhttpSettings", v)),
        (None, Some(v)) => Some(("splithttpSettings", v)),
        (None, None) => None,
    }
}

/// `xhttpSettings` outside a config file (the API's splithttp Config in its JSON form),
/// checked as a config's are; errors name fields under `path`.
pub fn load_xhttp_settings(value: Value, path: &str) -> Result<XhttpSpec, ConfigError> {
    xhttp_settings(Some(value), path)
}

/// `xhttpSettings` (or `splithttpSettings`) at `path`; `None` is all defaults.
pub(super) fn xhttp_settings(raw: Option<Value>, path: &str) -> Result<XhttpSpec, ConfigError> {
    let outer: RawXhttpSettings = match raw {
        None | Some(Value::Null) => RawXhttpSettings::default(),
        Some(v) => deserialize_at(v, path)?,
    };
    // As Xray: `extra` is a whole config of its own; the outer keys but these three are
    // dropped.
    let (raw, at) = match outer.extra {
        Some(extra) if !extra.is_null() => {
            let at = format!("{path}.extra");
            let mut inner: RawXhttpSettings = deserialize_at(extra, &at)?;
            inner.host = outer.host;
            inner.path = outer.path;
            inner.mode = outer.mode;
            (inner, at)
        }
        _ => (RawXhttpSettings { extra: None, ..outer }, path.to_owned()),
    };
    if raw.extra.is_some() {
        return Err(ConfigError::invalid(format!("{at}.extra"), "extra cannot hold another extra"));
    }
    let key =
        |k: &str| if k == "host" || k == "path" || k == "mode" { format!("{path}.{k}") } else { format!("{at}.{k}") };
    let mode_text = raw.mode.unwrap_or_default();
    let mode = Mode::parse(&mode_text)
        .ok_or_else(|| ConfigError::invalid(key("mode"), format!("unsupported mode {mode_text:?}")))?;
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        if name.eq_ignore_ascii_case("host") {
            return Err(ConfigError::invalid(format!("{at}.headers.{name}"), "\"headers\" can't contain \"host\""));
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(ConfigError::invalid(format!("{at}.headers.{name}"), "not a valid HTTP header"));
        }
        headers.push((name, value));
    }
    let host = raw.host.unwrap_or_default();
    if host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/') {
        return Err(ConfigError::invalid(key("host"), format!("{host:?} is not a host name")));
    }
    let raw_path = raw.path.unwrap_or_default();
    if raw_path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(ConfigError::invalid(key("path"), format!("{raw_path:?} is not a URL path")));
    }

    let mut padding = Padding::default();
    if let Some(bytes) = range(raw.x_padding_bytes, &key("xPaddingBytes"))? {
        if bytes.from == 0 {
            return Err(ConfigError::invalid(key("xPaddingBytes"), "xPaddingBytes cannot be disabled"));
        }
        padding.bytes = bytes;
    }
    padding.obfs_mode = raw.x_padding_obfs_mode.unwrap_or(false);
    if let Some(k) = raw.x_padding_key.filter(|k| !k.is_empty()) {
        padding.key = k;
    }
    if let Some(h) = raw.x_padding_header.filter(|h| !h.is_empty()) {
        padding.header = h;
    }
    padding.placement = match raw.x_padding_placement.as_deref().unwrap_or("") {
        "" => Placement::QueryInHeader,
        p @ ("cookie" | "header" | "query" | "queryInHeader") => Placement::parse(p).unwrap_or(Placement::Header),
        p => {
            return Err(ConfigError::invalid(key("xPaddingPlacement"), format!("unsupported padding placement {p:?}")))
        }
    };
    let method = raw.x_padding_method.unwrap_or_default();
    padding.method = PaddingMethod::parse(&method)
        .ok_or_else(|| ConfigError::invalid(key("xPaddingMethod"), format!("unsupported padding method {method:?}")))?;

    let uplink_data_placement = match raw.uplink_data_placement.as_deref().unwrap_or("") {
        "" | "auto" => Placement::Auto,
        "body" => Placement::Body,
        p @ ("cookie" | "header") => {
            if mode != Mode::PacketUp {
                return Err(ConfigError::invalid(
                    key("uplinkDataPlacement"),
                    format!("{p:?} is allowed only in packet-up mode"),
                ));
            }
            Placement::parse(p).unwrap_or(Placement::Body)
        }
        p => {
            return Err(ConfigError::invalid(
                key("uplinkDataPlacement"),
                format!("unsupported uplink data placement {p:?}"),
            ))
        }
    };
    let uplink_http_method = match raw.uplink_http_method.as_deref().unwrap_or("") {
        "" => "POST".to_owned(),
        m => m.to_ascii_uppercase(),
    };
    if !uplink_http_method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ConfigError::invalid(key("uplinkHTTPMethod"), format!("{uplink_http_method:?} is not a method")));
    }
    if uplink_http_method == "GET" && mode != Mode::PacketUp {
        return Err(ConfigError::invalid(key("uplinkHTTPMethod"), "GET is allowed only in packet-up mode"));
    }
    let meta = |value: Option<String>, name: &str| -> Result<Placement, ConfigError> {
        match value.as_deref().unwrap_or("") {
            "" => Ok(Placement::Path),
            p @ ("path" | "cookie" | "header" | "query") => Ok(Placement::parse(p).unwrap_or(Placement::Path)),
            p => Err(ConfigError::invalid(key(name), format!("unsupported placement {p:?}"))),
        }
    };
    let session_placement = meta(raw.session_id_placement, "sessionIDPlacement")?;
    let seq_placement = meta(raw.seq_placement, "seqPlacement")?;
    let default_key = |placement: Placement, cookie: &str, header: &str| match placement {
        Placement::Cookie | Placement::Query => cookie.to_owned(),
        Placement::Header => header.to_owned(),
        _ => String::new(),
    };
    let session_key = raw
        .session_id_key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| default_key(session_placement, "x_session", "X-Session"));
    let seq_key = raw.seq_key.filter(|k| !k.is_empty()).unwrap_or_else(|| default_key(seq_placement, "x_seq", "X-Seq"));
    let uplink_data_key = raw.uplink_data_key.filter(|k| !k.is_empty()).unwrap_or_else(|| {
        if uplink_data_placement == Placement::Cookie {
            "x_data".into()
        } else {
            "X-Data".into()
        }
    });

    let mut session_id_table = raw.session_id_table.unwrap_or_default();
    let session_id_length = range(raw.session_id_length, &key("sessionIDLength"))?.unwrap_or_default();
    if !session_id_table.is_empty() {
        if let Some((_, chars)) = shardray_wire::xhttp::SESSION_ID_TABLES.iter().find(|(n, _)| *n == session_id_table) {
            session_id_table = (*chars).to_owned();
        }
        if !session_id_table.is_ascii() {
            return Err(ConfigError::invalid(key("sessionIDTable"), "must contain only ASCII characters"));
        }
        if session_id_length.from == 0 {
            return Err(ConfigError::invalid(key("sessionIDLength"), "from must be greater than 0"));
        }
        // As Xray: at least 2^31 possible ids.
        let room: f64 = (session_id_length.from..=session_id_length.to)
            .map(|k| (session_id_table.len() as f64).powi(k.min(64) as i32))
            .sum();
        if room < f64::from(1u32 << 31) {
            return Err(ConfigError::invalid(key("sessionIDTable"), "sessionIDTable or sessionIDLength is too small"));
        }
    }
    let server_max_header_bytes = match raw.server_max_header_bytes.unwrap_or(0) {
        n if n < 0 => return Err(ConfigError::invalid(key("serverMaxHeaderBytes"), "negative")),
        0 => 8192,
        n => u32::try_from(n).map_err(|_| ConfigError::invalid(key("serverMaxHeaderBytes"), "too large"))?,
    };
    let max_buffered_posts = match raw.sc_max_buffered_posts.unwrap_or(0) {
        n if n <= 0 => 30,
        n => u32::try_from(n).map_err(|_| ConfigError::invalid(key("scMaxBufferedPosts"), "too large"))?,
    };
    // Ranges of 0-0 take Xray's normalised defaults (config.go `GetNormalized*`).
    let or = |r: Option<Range>, default: Range| r.filter(|r| r.to > 0).unwrap_or(default);
    let defaults = Settings::default();
    let (norm_path, query) =
        normalize_path(&raw_path, session_placement == Placement::Path || seq_placement == Placement::Path);
    let settings = Settings {
        path: norm_path,
        query,
        host,
        mode,
        headers,
        padding,
        no_grpc_header: raw.no_grpc_header.unwrap_or(false),
        no_sse_header: raw.no_sse_header.unwrap_or(false),
        max_each_post_bytes: or(
            range(raw.sc_max_each_post_bytes, &key("scMaxEachPostBytes"))?,
            defaults.max_each_post_bytes,
        ),
        min_posts_interval_ms: or(
            range(raw.sc_min_posts_interval_ms, &key("scMinPostsIntervalMs"))?,
            defaults.min_posts_interval_ms,
        ),
        max_buffered_posts,
        stream_up_server_secs: or(
            range(raw.sc_stream_up_server_secs, &key("scStreamUpServerSecs"))?,
            defaults.stream_up_server_secs,
        ),
        uplink_http_method,
        session_placement,
        session_key,
        seq_placement,
        seq_key,
        uplink_data_placement,
        uplink_data_key,
        uplink_chunk_size: range(raw.uplink_chunk_size, &key("uplinkChunkSize"))?.unwrap_or_default(),
        server_max_header_bytes,
        session_id_table,
        session_id_length,
    };
    if raw.download_settings.is_some() && mode == Mode::StreamOne {
        return Err(ConfigError::invalid(key("downloadSettings"), "cannot be used in stream-one mode"));
    }
    let xmux = xmux(raw.xmux, &key("xmux"))?;
    Ok(XhttpSpec { settings, xmux, download_settings: raw.download_settings.is_some_and(|v| !v.is_null()) })
}

/// `xmux`, with Xray's defaults when absent or empty.
fn xmux(raw: Option<RawXmux>, path: &str) -> Result<XmuxSpec, ConfigError> {
    let raw = raw.unwrap_or_default();
    let r = |v: Option<Value>, k: &str| -> Result<Range, ConfigError> {
        Ok(range(v, &format!("{path}.{k}"))?.unwrap_or_default())
    };
    let mut x = XmuxSpec {
        max_concurrency: r(raw.max_concurrency, "maxConcurrency")?,
        max_connections: r(raw.max_connections, "maxConnections")?,
        c_max_reuse_times: r(raw.c_max_reuse_times, "cMaxReuseTimes")?,
        h_max_request_times: r(raw.h_max_request_times, "hMaxRequestTimes")?,
        h_max_reusable_secs: r(raw.h_max_reusable_secs, "hMaxReusableSecs")?,
        h_keep_alive_period: raw.h_keep_alive_period.unwrap_or(0),
    };
    if x.max_connections.to > 0 && x.max_concurrency.to > 0 {
        return Err(ConfigError::invalid(
            format!("{path}.maxConnections"),
            "maxConnections cannot be specified together with maxConcurrency",
        ));
    }
    if x == XmuxSpec::default() {
        x.max_connections = Range::new(3, 3);
        x.h_max_request_times = Range::new(600, 900);
        x.h_max_reusable_secs = Range::new(1800, 3000);
    }
    Ok(x)
}

/// A range as Xray's `Int32Range` reads it: a number, or a string `"N"` or `"FROM-TO"`
/// (either order); negative values are refused.
fn range(raw: Option<Value>, path: &str) -> Result<Option<Range>, ConfigError> {
    let bad = || ConfigError::invalid(path, "expected a number or a string of the form \"1-2\"");
    let num = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
    let (a, b) = match raw {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?;
            (n, n)
        }
        Some(Value::String(s)) => match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(&s)?;
                (n, n)
            }
        },
        Some(_) => return Err(bad()),
    };
    Ok(Some(Range::new(a.min(b), a.max(b))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_xrays() {
        let x = xhttp_settings(Some(json!({"path": "xh"})), "s").unwrap();
        assert_eq!(x.settings.path, "/xh/");
        assert_eq!(x.settings.mode, Mode::Auto);
        assert_eq!(x.settings.padding.bytes, Range::new(100, 1000));
        assert_eq!(x.settings.max_buffered_posts, 30);
        assert_eq!(x.settings.max_each_post_bytes, Range::new(1_000_000, 1_000_000));
        assert_eq!(x.settings.uplink_data_placement, Placement::Auto);
        assert_eq!(x.xmux.max_connections, Range::new(3, 3));
    }

    #[test]
    fn extra_replaces_all_but_host_path_and_mode() {
        let x = xhttp_settings(
            Some(json!({"path": "/a", "mode": "packet-up", "noSSEHeader": true,
                        "extra": {"xPaddingBytes": "200-100", "scMaxBufferedPosts": 5, "path": "/ignored"}})),
            "s",
        )
        .unwrap();
        assert_eq!(x.settings.path, "/a/");
        assert_eq!(x.settings.mode, Mode::PacketUp);
        assert!(!x.settings.no_sse_header, "outer keys besides host/path/mode are dropped");
        assert_eq!(x.settings.padding.bytes, Range::new(100, 200));
        assert_eq!(x.settings.max_buffered_posts, 5);
    }

    /// Through the whole loader: both network names, `xhttpSettings` winning over
    /// `splithttpSettings` (as transport_internet.go), an outbound's settings checked as an
    /// inbound's. (TLS offering h2 and http/1.1 is tested end to end in tests/tests/xhttp.rs.)
    #[test]
    fn the_loader_reads_it_for_inbounds_and_outbounds() {
        let inbound = |stream: Value| {
            json!({ "inbounds": [{ "tag": "in", "listen": "127.0.0.1", "port": 10086, "protocol": "vless",
                "settings": { "decryption": "none", "clients": [] }, "streamSettings": stream }],
                "outbounds": [{ "protocol": "freedom" }] })
        };
        let load = |v: Value| crate::config::load_str(&v.to_string());
        let cfg = load(inbound(json!({ "network": "splithttp", "splithttpSettings": { "path": "/old" },
            "xhttpSettings": { "path": "/new" } })))
        .unwrap();
        let shardray_core::spec::TransportSpec::Xhttp(x) = &cfg.inbounds[0].transport else { panic!() };
        assert_eq!(x.settings.path, "/new/");
        let cfg =
            load(inbound(json!({ "network": "xhttp", "xhttpSettings": { "path": "/new", "mode": "stream-up" } })))
                .unwrap();
        let shardray_core::spec::TransportSpec::Xhttp(x) = &cfg.inbounds[0].transport else { panic!() };
        assert_eq!((x.settings.path.as_str(), x.settings.mode), ("/new/", Mode::StreamUp));
        let e = load(inbound(json!({ "network": "xhttp", "xhttpSettings": { "mode": "x" } }))).unwrap_err();
        assert_eq!(e.path, "inbounds[0].streamSettings.xhttpSettings.mode");
        let outbound = |stream: Value| {
            json!({ "outbounds": [{ "protocol": "vless", "streamSettings": stream, "settings": { "vnext": [{
                "address": "a.example", "port": 443, "users": [{ "id": "b831381d-6324-4d53-ad4f-8cda48b30811" }] }] } }] })
        };
        let e = load(outbound(json!({ "network": "xhttp", "xhttpSettings": { "mode": "bad" } }))).unwrap_err();
        assert_eq!(e.path, "outbounds[0].streamSettings.xhttpSettings.mode");
        let cfg = load(outbound(json!({ "network": "splithttp" }))).unwrap();
        let shardray_core::spec::OutboundProtocol::Vless(v) = &cfg.outbounds[0].protocol else { panic!() };
        assert!(matches!(v.transport, shardray_core::spec::TransportSpec::Xhttp(_)));
    }

    #[test]
    fn errors_name_the_field() {
        let e = xhttp_settings(Some(json!({"mode": "bogus"})), "s").unwrap_err();
        assert_eq!(e.path, "s.mode");
        let e = xhttp_settings(Some(json!({"extra": {"xPaddingBytes": "0-10"}})), "s").unwrap_err();
        assert_eq!(e.path, "s.extra.xPaddingBytes");
        let e = xhttp_settings(Some(json!({"headers": {"Host": "x"}})), "s").unwrap_err();
        assert_eq!(e.path, "s.headers.Host");
        let e = xhttp_settings(Some(json!({"uplinkDataPlacement": "header"})), "s").unwrap_err();
        assert_eq!(e.path, "s.uplinkDataPlacement");
        let e = xhttp_settings(Some(json!({"xmux": {"maxConnections": 2, "maxConcurrency": "1-2"}})), "s").unwrap_err();
        assert_eq!(e.path, "s.xmux.maxConnections");
        let e = xhttp_settings(Some(json!({"scMaxEachPostBytes": [1]})), "s").unwrap_err();
        assert_eq!(e.path, "s.scMaxEachPostBytes");
    }
}
