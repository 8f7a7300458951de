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

/// The `downloadSettings` in force in the xhttpSettings `raw` at `path` (inside `extra`
/// when there is one, as Xray's Build reads it), with its path.
pub(super) fn download_value(raw: &Value, path: &str) -> Option<(Value, String)> {
    let (settings, at) = match raw.get("extra") {
        Some(extra) => (extra, format!("{path}.extra")),
        None => (raw, path.to_owned()),
    };
    settings.get("downloadSettings").filter(|v| !v.is_null()).map(|v| (v.clone(), format!("{at}.downloadSettings")))
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
    // dropped. `"extra": null` is an extra too (Go hands a RawMessage its null): an empty one.
    let (raw, at) = match outer.extra {
        Some(extra) => {
            let at = format!("{path}.extra");
            let mut inner: RawXhttpSettings =
                if extra.is_null() { RawXhttpSettings::default() } else { deserialize_at(extra, &at)? };
            inner.host = outer.host;
            inner.path = outer.path;
            inner.mode = outer.mode;
            inner.from_api_config = outer.from_api_config;
            (inner, at)
        }
        None => (outer, path.to_owned()),
    };
    // An `extra` inside `extra` is read (it must be JSON) and then ignored, as Xray's Build
    // looks for `extra` once.
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
    // As Xray: 0 (or "0", "0-0", "") is the default 100-1000; anything else must be positive.
    match range(raw.x_padding_bytes, &key("xPaddingBytes"))? {
        None | Some((0, 0)) => {}
        Some((from, _)) if from <= 0 => {
            return Err(ConfigError::invalid(key("xPaddingBytes"), "xPaddingBytes cannot be disabled"))
        }
        Some(r) => padding.bytes = positive(r),
    }
    padding.obfs_mode = raw.x_padding_obfs_mode.unwrap_or(false);
    // Xray's server reads an API Config's padding keys as they are (xpadding.go), where its
    // loader fills in defaults: in obfs mode an empty key, header or placement stays empty
    // (no cookie, header or response padding by that name; the method's "" is repeat-x's
    // length check either way).
    let from_api = raw.from_api_config.unwrap_or(false);
    let as_given = from_api && padding.obfs_mode;
    let given = |v: Option<String>, default: &mut String| match v {
        Some(v) if !v.is_empty() => *default = v,
        _ if as_given => default.clear(),
        _ => {}
    };
    given(raw.x_padding_key, &mut padding.key);
    given(raw.x_padding_header, &mut padding.header);
    padding.placement = match raw.x_padding_placement.as_deref().unwrap_or("") {
        "" if as_given => Placement::Empty,
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
        // The server's GetNormalizedUplinkDataPlacement: a Config's "" is body; the loader's auto.
        "" if from_api => Placement::Body,
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
    let id_length = range(raw.session_id_length, &key("sessionIDLength"))?.unwrap_or_default();
    // As Xray: sessionIDLength is read (and checked) only with a sessionIDTable.
    let mut session_id_length = Range::default();
    if !session_id_table.is_empty() {
        if let Some((_, chars)) = shardray_wire::xhttp::SESSION_ID_TABLES.iter().find(|(n, _)| *n == session_id_table) {
            session_id_table = (*chars).to_owned();
        }
        if !session_id_table.is_ascii() {
            return Err(ConfigError::invalid(key("sessionIDTable"), "must contain only ASCII characters"));
        }
        if id_length.0 <= 0 {
            return Err(ConfigError::invalid(key("sessionIDLength"), "from must be greater than 0"));
        }
        session_id_length = positive(id_length);
        // As Xray: at least 2^31 possible ids (summed until there are enough).
        let base = session_id_table.len() as f64;
        let lengths = session_id_length.from..=session_id_length.to;
        let room = if base == 1.0 {
            // One character: one id per length, counted without a loop over billions of them.
            f64::from(session_id_length.to - session_id_length.from) + 1.0
        } else {
            let mut room = 0f64;
            for k in lengths {
                room += base.powi(k.min(64) as i32);
                if room >= f64::from(1u32 << 31) {
                    break;
                }
            }
            room
        };
        if room < f64::from(1u32 << 31) {
            return Err(ConfigError::invalid(key("sessionIDTable"), "sessionIDTable or sessionIDLength is too small"));
        }
    }
    // An int32 in Xray: a larger number does not load there either.
    let server_max_header_bytes = match raw.server_max_header_bytes.unwrap_or(0) {
        n if n < 0 => return Err(ConfigError::invalid(key("serverMaxHeaderBytes"), "invalid negative value")),
        0 => 8192,
        n => i32::try_from(n)
            .map(|n| n as u32)
            .map_err(|_| ConfigError::invalid(key("serverMaxHeaderBytes"), "larger than an int32"))?,
    };
    let max_buffered_posts = match raw.sc_max_buffered_posts.unwrap_or(0) {
        n if n <= 0 => 30,
        n => u32::try_from(n).map_err(|_| ConfigError::invalid(key("scMaxBufferedPosts"), "too large"))?,
    };
    // As config.go's `GetNormalized*`: a range whose upper end is 0 takes the default; past
    // that each key reads negative ends its own way.
    let defaults = Settings::default();
    let set = |r: Option<(i32, i32)>| r.filter(|&(_, to)| to != 0);
    // The server reads the upper end, the client a size drawn from the range (Xray's client
    // panics on one below 1): at least 1 byte either way.
    let max_each_post_bytes = match set(range(raw.sc_max_each_post_bytes, &key("scMaxEachPostBytes"))?) {
        None => defaults.max_each_post_bytes,
        Some(r) => positive(r),
    };
    // Xray's client pauses only when the lower end is above 0: "-1" or "0-50" is no pause.
    let min_posts_interval_ms = match set(range(raw.sc_min_posts_interval_ms, &key("scMinPostsIntervalMs"))?) {
        None => defaults.min_posts_interval_ms,
        Some((from, to)) if from > 0 => Range::new(from as u32, to as u32),
        Some(_) => Range::new(0, 0),
    };
    // hub.go writes keep-alive padding only when the upper end is above 0: "-1" is never.
    let stream_up_server_secs = match set(range(raw.sc_stream_up_server_secs, &key("scStreamUpServerSecs"))?) {
        None => defaults.stream_up_server_secs,
        Some((from, to)) if to > 0 => Range::new(from.max(0) as u32, to as u32),
        Some(_) => Range::new(0, 0),
    };
    // config.go: 0 is the placement's default (left 0-0 here), and a lower end under 64 is 64.
    let uplink_chunk_size = match set(range(raw.uplink_chunk_size, &key("uplinkChunkSize"))?) {
        None => Range::default(),
        Some((from, to)) if from < 64 => Range::new(64, to.max(64) as u32),
        Some(r) => positive(r),
    };
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
        max_each_post_bytes,
        min_posts_interval_ms,
        max_buffered_posts,
        stream_up_server_secs,
        uplink_http_method,
        session_placement,
        session_key,
        seq_placement,
        seq_key,
        uplink_data_placement,
        uplink_data_key,
        uplink_chunk_size,
        server_max_header_bytes,
        session_id_table,
        session_id_length,
    };
    if raw.download_settings.is_some() && mode == Mode::StreamOne {
        return Err(ConfigError::invalid(key("downloadSettings"), "cannot be used in stream-one mode"));
    }
    let xmux = xmux(raw.xmux, &key("xmux"))?;
    // An outbound reads its downloadSettings (config/outbound.rs `xhttp_download`).
    let download_settings = raw.download_settings.is_some_and(|v| !v.is_null());
    Ok(XhttpSpec { settings, xmux, download_settings, download: None })
}

/// `xmux`, with Xray's defaults when absent or empty.
fn xmux(raw: Option<RawXmux>, path: &str) -> Result<XmuxSpec, ConfigError> {
    let raw = raw.unwrap_or_default();
    let r = |v: Option<Value>, k: &str| -> Result<(i32, i32), ConfigError> {
        Ok(range(v, &format!("{path}.{k}"))?.unwrap_or_default())
    };
    let read = [
        r(raw.max_concurrency, "maxConcurrency")?,
        r(raw.max_connections, "maxConnections")?,
        r(raw.c_max_reuse_times, "cMaxReuseTimes")?,
        r(raw.h_max_request_times, "hMaxRequestTimes")?,
        r(raw.h_max_reusable_secs, "hMaxReusableSecs")?,
    ];
    let h_keep_alive_period = raw.h_keep_alive_period.unwrap_or(0);
    // Xray's XMUX acts on a drawn value only when it is above 0: a negative end is 0 (no limit).
    let [max_concurrency, max_connections, c_max_reuse_times, h_max_request_times, h_max_reusable_secs] =
        read.map(|(from, to)| Range::new(from.max(0) as u32, to.max(0) as u32));
    let mut x = XmuxSpec {
        max_concurrency,
        max_connections,
        c_max_reuse_times,
        h_max_request_times,
        h_max_reusable_secs,
        h_keep_alive_period,
    };
    if x.max_connections.to > 0 && x.max_concurrency.to > 0 {
        return Err(ConfigError::invalid(
            format!("{path}.maxConnections"),
            "maxConnections cannot be specified together with maxConcurrency",
        ));
    }
    // Xray's defaults apply only when nothing was set, negatives included (checked as read).
    if read == [(0, 0); 5] && h_keep_alive_period == 0 {
        x.max_connections = Range::new(3, 3);
        x.h_max_request_times = Range::new(600, 900);
        x.h_max_reusable_secs = Range::new(1800, 3000);
    }
    Ok(x)
}

/// A range as Xray's `Int32Range` reads it (infra/conf/common.go), in order: a JSON
/// integer, or a string `"N"`, `"FROM-TO"` (either order) or `""` (0); negative ends are
/// allowed (`"-5"`, `"-5-10"`, `"-9--3"`), and each key decides what they mean.
fn range(raw: Option<Value>, path: &str) -> Result<Option<(i32, i32)>, ConfigError> {
    let bad = || ConfigError::invalid(path, "expected an integer or a string of the form \"1-2\"");
    // strconv.Atoi then the int32 Xray keeps: no spaces, an optional sign.
    let num = |s: &str| s.parse::<i32>().map_err(|_| bad());
    let (a, b) = match raw {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad)?;
            (n, n)
        }
        Some(Value::String(s)) if s.is_empty() => (0, 0),
        Some(Value::String(s)) => match num(&s) {
            Ok(n) => (n, n),
            Err(_) => {
                // The dash that splits the range: the second one when the first end is negative.
                let from = usize::from(s.starts_with('-'));
                let at = s[from..].find('-').map(|i| i + from).ok_or_else(bad)?;
                (num(&s[..at])?, num(&s[at + 1..])?)
            }
        },
        Some(_) => return Err(bad()),
    };
    Ok(Some((a.min(b), a.max(b))))
}

/// An ordered range of positive ends as the unsigned [`Range`] (callers have checked them).
fn positive((from, to): (i32, i32)) -> Range {
    Range::new(from.max(1) as u32, to.max(1) as u32)
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
        // `"extra": null` is an empty extra: the outer keys but host, path and mode go.
        let x = xhttp_settings(Some(json!({"path": "/a", "scMaxBufferedPosts": 5, "extra": null})), "s").unwrap();
        assert_eq!((x.settings.path.as_str(), x.settings.max_buffered_posts), ("/a/", 30));
        // An extra in extra is ignored, as Xray ignores it.
        let x =
            xhttp_settings(Some(json!({"extra": {"scMaxBufferedPosts": 5, "extra": {"scMaxBufferedPosts": 9}}})), "s")
                .unwrap();
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

    /// infra/conf/common.go `Int32Range`: a JSON integer, or `strconv.Atoi` of the string
    /// (an optional sign, no spaces), `""` as 0, the range split at its first dash or, when
    /// the first end is negative, its second; reordered; int32 only.
    #[test]
    fn range_strings_parse_as_xrays_int32_range() {
        let r = |v: Value| range(Some(v), "k");
        for (v, want) in [
            (json!(5), (5, 5)),
            (json!(-7), (-7, -7)),
            (json!("5"), (5, 5)),
            (json!("+5"), (5, 5)),
            (json!(""), (0, 0)),
            (json!("10-5"), (5, 10)),
            (json!("-5-10"), (-5, 10)),
            (json!("-9--3"), (-9, -3)),
            (json!("5--1"), (-1, 5)),
            (json!(-2147483648i64), (i32::MIN, i32::MIN)),
        ] {
            assert_eq!(r(v.clone()).unwrap(), Some(want), "{v}");
        }
        for v in [json!(" 5"), json!("1-2-3"), json!("--1"), json!("5-"), json!(1.5), json!(2147483648i64), json!(true)]
        {
            assert_eq!(r(v.clone()).unwrap_err().path, "k", "{v}");
        }
        assert_eq!(range(None, "k").unwrap(), None);
    }

    /// transport_method.go refuses xPaddingBytes only when it is set and not positive: 0,
    /// "0", "0-0" and "" are the unset value, the default 100-1000.
    #[test]
    fn zero_padding_bytes_is_the_default_and_negative_is_refused() {
        for v in [json!(0), json!("0"), json!("0-0"), json!("")] {
            let x = xhttp_settings(Some(json!({ "xPaddingBytes": v })), "s").unwrap();
            assert_eq!(x.settings.padding.bytes, Range::new(100, 1000), "{v}");
        }
        for v in [json!(-1), json!("-1"), json!("0-10"), json!("-5-10"), json!("-9--3")] {
            let e = xhttp_settings(Some(json!({ "xPaddingBytes": v })), "s").unwrap_err();
            assert_eq!(
                (e.path.as_str(), e.to_string().contains("cannot be disabled")),
                ("s.xPaddingBytes", true),
                "{v}"
            );
        }
    }

    /// What Xray's loader takes with negative or zero ends, read as config.go, dialer.go,
    /// hub.go and mux.go read them.
    #[test]
    fn negative_and_zero_ends_load_as_xray_reads_them() {
        let load = |v: Value| xhttp_settings(Some(v), "s").unwrap();
        let s = |v: Value| load(v).settings;
        // Unset (upper end 0): the defaults.
        let d = s(json!({ "scMaxEachPostBytes": "0", "scMinPostsIntervalMs": 0, "scStreamUpServerSecs": "-5-0",
                          "uplinkChunkSize": "" }));
        assert_eq!(
            (d.max_each_post_bytes, d.min_posts_interval_ms, d.stream_up_server_secs, d.uplink_chunk_size),
            (Range::new(1_000_000, 1_000_000), Range::new(30, 30), Range::new(20, 80), Range::default())
        );
        // The client pauses only when the lower end is above 0.
        assert_eq!(s(json!({ "scMinPostsIntervalMs": "-1" })).min_posts_interval_ms, Range::new(0, 0));
        assert_eq!(s(json!({ "scMinPostsIntervalMs": "0-50" })).min_posts_interval_ms, Range::new(0, 0));
        assert_eq!(s(json!({ "scMinPostsIntervalMs": "10-50" })).min_posts_interval_ms, Range::new(10, 50));
        // The server pads a stream-up response only when the upper end is above 0.
        assert_eq!(s(json!({ "scStreamUpServerSecs": -1 })).stream_up_server_secs, Range::new(0, 0));
        assert_eq!(s(json!({ "scStreamUpServerSecs": "-5-10" })).stream_up_server_secs, Range::new(0, 10));
        // Chunks of at least 64 characters.
        assert_eq!(s(json!({ "uplinkChunkSize": 10 })).uplink_chunk_size, Range::new(64, 64));
        assert_eq!(s(json!({ "uplinkChunkSize": "-5-100" })).uplink_chunk_size, Range::new(64, 100));
        assert_eq!(s(json!({ "uplinkChunkSize": "100-200" })).uplink_chunk_size, Range::new(100, 200));
        assert_eq!(s(json!({ "scMaxEachPostBytes": "-5-100" })).max_each_post_bytes, Range::new(1, 100));
        // sessionIDLength means nothing without a sessionIDTable, so it is not checked then.
        assert_eq!(s(json!({ "sessionIDLength": -3 })).session_id_length, Range::default());
        let e =
            xhttp_settings(Some(json!({ "sessionIDTable": "Base62", "sessionIDLength": "-3-8" })), "s").unwrap_err();
        assert_eq!(e.path, "s.sessionIDLength");
        // One character and two billion lengths: refused as too small, without looping over them.
        let e =
            xhttp_settings(Some(json!({ "sessionIDTable": "a", "sessionIDLength": "1-2147483647" })), "s").unwrap_err();
        assert_eq!(e.path, "s.sessionIDTable");
        // XMUX acts on values above 0: a negative end is no limit, and having been set at all it
        // keeps Xray's defaults out.
        let x = load(json!({ "xmux": { "maxConcurrency": "-1", "hKeepAlivePeriod": -1 } })).xmux;
        assert_eq!(
            (x.max_concurrency, x.max_connections, x.h_keep_alive_period),
            (Range::default(), Range::default(), -1)
        );
        let x = load(json!({ "xmux": { "hMaxRequestTimes": 0 } })).xmux;
        assert_eq!(x.max_connections, Range::new(3, 3), "all zero is unset: the defaults");
        let x = load(json!({ "xmux": { "cMaxReuseTimes": "-4-8" } })).xmux;
        assert_eq!(x.c_max_reuse_times, Range::new(0, 8));
        // serverMaxHeaderBytes is an int32, and may not be negative.
        for (v, ok) in
            [(json!(0), true), (json!(2147483647i64), true), (json!(2147483648i64), false), (json!(-1), false)]
        {
            let r = xhttp_settings(Some(json!({ "serverMaxHeaderBytes": v })), "s");
            assert_eq!(r.is_ok(), ok, "{v}");
            if let Err(e) = r {
                assert_eq!(e.path, "s.serverMaxHeaderBytes");
            }
        }
    }
}
