//! `/metrics` over HTTP: the exposition in the format the client asks for. Prometheus text
//! 0.0.4 by default (what `curl`, `promtool check metrics` and most scrapers read), OpenMetrics
//! 1.0 when the `Accept` header prefers it (Prometheus itself asks for it first).
use std::sync::Arc;

use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics where its quality is at least that
    /// of `text/plain` (and of `*/*`); Prometheus text otherwise, and without the header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::PrometheusText;
        };
        let (mut openmetrics, mut text) = (None::<f32>, None::<f32>);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" | "text/*" | "*/*" => &mut text,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |best| best.max(q)));
        }
        match (openmetrics, text) {
            (Some(om), Some(t)) if om >= t && om > 0.0 => Format::OpenMetrics,
            (Some(om), None) if om > 0.0 => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// The registry in `format`.
pub fn exposition(registry: &Registry, format: Format) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, registry);
    match format {
        Format::OpenMetrics => text,
        Format::PrometheusText => to_prometheus_text(&text),
    }
}

/// OpenMetrics text as Prometheus text 0.0.4: a counter's `# HELP`/`# TYPE` name the
/// `_total` series they describe, an info metric becomes a gauge named `_info`, and `# UNIT`
/// and `# EOF` go (0.0.4 has neither).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE: held until the TYPE says how to name it.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), kind),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                _ => (name.to_string(), kind),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves GET /metrics on `listener` until the runtime ends.
pub async fn serve(registry: Arc<Registry>, listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 8192];
            let mut len = 0;
            while len < request.len() {
                match stream.read(&mut request[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
                if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&request[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let response = if head.starts_with("GET ") && path == "/metrics" {
                let accept = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("accept")
                        .then_some(value.trim())
                });
                let format = Format::negotiate(accept);
                let body = exposition(&registry, format);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: \
                     close\r\n\r\n{body}",
                    format.content_type(),
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_accept_header() {
        use Format::*;
        for (accept, format) in [
            (None, PrometheusText),
            (Some("*/*"), PrometheusText),
            (Some("text/plain;version=0.0.4"), PrometheusText),
            (
                Some("application/openmetrics-text;version=1.0.0"),
                OpenMetrics,
            ),
            // What Prometheus 2.x/3.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                PrometheusText,
            ),
            (Some("application/openmetrics-text;q=0"), PrometheusText),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn prometheus_text_names_help_and_type_as_the_samples() {
        let om = "# HELP tcptrace_transitions TCP state transitions.\n\
                  # TYPE tcptrace_transitions counter\n\
                  tcptrace_transitions_total{from=\"LISTEN\",to=\"SYN_RECV\"} 3\n\
                  # HELP tcptrace_build Version.\n\
                  # TYPE tcptrace_build info\n\
                  tcptrace_build_info{version=\"0.1.0\"} 1\n\
                  # HELP tcptrace_rtt_seconds RTT.\n\
                  # TYPE tcptrace_rtt_seconds histogram\n\
                  # UNIT tcptrace_rtt_seconds seconds\n\
                  tcptrace_rtt_seconds_sum 0.0\n\
                  # EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP tcptrace_transitions_total TCP state transitions.\n\
             # TYPE tcptrace_transitions_total counter\n\
             tcptrace_transitions_total{from=\"LISTEN\",to=\"SYN_RECV\"} 3\n\
             # HELP tcptrace_build_info Version.\n\
             # TYPE tcptrace_build_info gauge\n\
             tcptrace_build_info{version=\"0.1.0\"} 1\n\
             # HELP tcptrace_rtt_seconds RTT.\n\
             # TYPE tcptrace_rtt_seconds histogram\n\
             tcptrace_rtt_seconds_sum 0.0\n"
        );
    }
}
