//! `calls-api --cors-origin`: preflights from the allowed origins may send the key headers,
//! their answers expose the idempotency headers, and a real browser (headless Chromium) on
//! another origin posts twice with one key and reads `Idempotent-Replayed: true`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::CallsApi;
use idem_tests::{RawRequest, RawResponse};
use serde_json::json;

const PAGE_ORIGIN: &str = "http://127.0.0.1:5173";
const OTHER_ORIGIN: &str = "https://app.example.com";

async fn preflight(addr: SocketAddr, origin: &str, path: &str, key_header: &str) -> RawResponse {
    RawRequest::new("OPTIONS", path)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            &format!(
                "authorization,content-type,{}",
                key_header.to_ascii_lowercase()
            ),
        )
        .send(addr)
        .await
}

/// The names a CORS header lists, lower case.
fn listed(res: &RawResponse, header: &str) -> Vec<String> {
    res.header(header)
        .unwrap_or("")
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

fn assert_allows(res: &RawResponse, origin: &str, key_header: &str) {
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("access-control-allow-origin"), Some(origin));
    let allowed = listed(res, "access-control-allow-headers");
    for header in [
        "authorization",
        "content-type",
        &key_header.to_ascii_lowercase(),
    ] {
        assert!(
            allowed.iter().any(|a| a == header),
            "{header} in {allowed:?}"
        );
    }
}

#[tokio::test]
async fn preflights_from_the_allowed_origins_may_send_either_key_header() {
    let api =
        CallsApi::start_args(&["--cors-origin", PAGE_ORIGIN, "--cors-origin", OTHER_ORIGIN]).await;
    for origin in [PAGE_ORIGIN, OTHER_ORIGIN] {
        let calls = preflight(api.addr, origin, "/v1/calls", "Idempotency-Key").await;
        assert_allows(&calls, origin, "Idempotency-Key");
        let messages = preflight(api.addr, origin, "/v1/messages", "X-Idempotency-Key").await;
        assert_allows(&messages, origin, "X-Idempotency-Key");
    }

    // The actual requests expose what a script needs to read about its key.
    let post = || {
        RawRequest::post("/v1/calls")
            .header("Origin", PAGE_ORIGIN)
            .header("Authorization", "Bearer cors-tests")
            .header("Idempotency-Key", "cors-key-1")
            .json(&json!({"agent_id": "agent_1", "phone_number": "+15555550123"}))
    };
    let first = post().send(api.addr).await;
    assert_eq!(first.status, 201);
    let retry = post().send(api.addr).await;
    assert!(retry.replayed());
    assert_eq!(
        retry.header("access-control-allow-origin"),
        Some(PAGE_ORIGIN)
    );
    let exposed = listed(&retry, "access-control-expose-headers");
    for header in ["idempotent-replayed", "retry-after", "x-request-id"] {
        assert!(
            exposed.iter().any(|e| e == header),
            "{header} in {exposed:?}"
        );
    }
}

#[tokio::test]
async fn a_preflight_from_an_origin_not_given_is_not_allowed() {
    let api = CallsApi::start_args(&["--cors-origin", PAGE_ORIGIN]).await;
    let res = preflight(api.addr, OTHER_ORIGIN, "/v1/calls", "Idempotency-Key").await;
    assert_ne!(
        res.header("access-control-allow-origin"),
        Some(OTHER_ORIGIN)
    );
    assert!(res.header("access-control-allow-headers").is_none());
}

/// `*` allows every origin, whatever other origins are given with it, in any order: an origin
/// named after it turned the list back into that origin alone.
#[tokio::test]
async fn any_origin_stays_allowed_when_named_origins_follow_it() {
    let api = CallsApi::start_args(&["--cors-origin", "*", "--cors-origin", PAGE_ORIGIN]).await;
    for origin in [PAGE_ORIGIN, OTHER_ORIGIN] {
        let res = preflight(api.addr, origin, "/v1/calls", "Idempotency-Key").await;
        assert!(
            res.header("access-control-allow-origin").is_some(),
            "{origin}: {res:?}"
        );
        assert!(
            res.header("access-control-allow-headers").is_some(),
            "{origin}: {res:?}"
        );
    }
}

#[tokio::test]
async fn without_an_origin_calls_api_answers_no_preflight() {
    let api = CallsApi::start(None).await;
    let res = preflight(api.addr, PAGE_ORIGIN, "/v1/calls", "Idempotency-Key").await;
    assert!(
        res.header("access-control-allow-origin").is_none(),
        "{res:?}"
    );
}

#[tokio::test]
async fn origins_can_come_from_the_environment() {
    let origins = format!("{PAGE_ORIGIN}, {OTHER_ORIGIN}");
    let api = CallsApi::start_env_args(&[("IDEM_CORS_ORIGINS", &origins)], &[]).await;
    for origin in [PAGE_ORIGIN, OTHER_ORIGIN] {
        let res = preflight(api.addr, origin, "/v1/calls", "Idempotency-Key").await;
        assert_allows(&res, origin, "Idempotency-Key");
    }
}

#[test]
fn an_origin_that_is_not_one_stops_calls_api_with_the_reason() {
    for (args, env) in [
        (vec!["--cors-origin", "http://127.0.0.1:5173/app"], None),
        (vec![], Some("http://127.0.0.1:5173,127.0.0.1:5174")),
    ] {
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]).args(&args);
        if let Some(origins) = env {
            command.env("IDEM_CORS_ORIGINS", origins);
        }
        let (code, stderr) = common::refused(command);
        assert_eq!(code, Some(2), "{args:?} {env:?}");
        assert!(
            stderr.contains("is not an origin; give scheme://host[:port]"),
            "{stderr}"
        );
    }
}

/// The browser: `IDEM_CHROMIUM`, else `chromium` or `chromium-browser` on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("IDEM_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Serves `page` at `/page.html` on `listener` (and 404 for anything else, such as the
/// favicon) until the test process ends: the page's origin.
fn serve_page(listener: TcpListener, page: String) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let read = stream.read(&mut head).unwrap_or(0);
            let wanted = String::from_utf8_lossy(&head[..read]).starts_with("GET /page.html ");
            let (status, body) = if wanted {
                ("200 OK", page.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// A page that posts the same call twice with one key to `api`, and writes what it read
/// into `#result` (and "done" into its title).
fn page(api: SocketAddr, key: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>running</title></head>
<body><pre id="result">running</pre>
<script>
const post = () => fetch("http://{api}/v1/calls", {{
  method: "POST",
  headers: {{
    "Authorization": "Bearer browser",
    "Content-Type": "application/json",
    "Idempotency-Key": "{key}",
  }},
  body: JSON.stringify({{agent_id: "agent_1", phone_number: "+15555550123"}}),
}});
const show = (text, title) => {{
  document.getElementById("result").textContent = text;
  document.title = title;
}};
(async () => {{
  const first = await post();
  const second = await post();
  const [a, b] = [await first.json(), await second.json()];
  show(JSON.stringify({{
    first_status: first.status,
    first_replayed: first.headers.get("Idempotent-Replayed"),
    second_status: second.status,
    second_replayed: second.headers.get("Idempotent-Replayed"),
    second_request_id: second.headers.get("X-Request-ID"),
    same_call: a.data.id === b.data.id,
  }}), "done");
}})().catch((error) => show("error: " + error, "failed"));
</script>
</body></html>"#
    )
}

/// Runs headless `chromium` on `url` and returns the DOM it dumped once the page's
/// requests were answered.
fn dump_dom(chromium: &PathBuf, url: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let scratch =
        std::env::temp_dir().join(format!("idem-chromium-{}-{nanos}", std::process::id()));
    let profile = scratch.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let out_path = scratch.join("dom.html");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Virtual time does not run out while requests are pending: the DOM is dumped once
        // the page's fetches were answered (or after 20 s of the page's own time).
        .arg("--virtual-time-budget=20000")
        .arg("--dump-dom")
        .arg(url)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        status.success(),
        "chromium exited with {status}; it printed: {dom}"
    );
    dom
}

#[tokio::test]
async fn a_browser_page_on_another_origin_reads_the_replay() {
    let Some(chromium) = chromium() else {
        if std::env::var("IDEM_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("IDEM_REQUIRE_CHROMIUM=1 and no chromium found: install Debian's chromium package, or name the browser in IDEM_CHROMIUM");
        }
        eprintln!("skipped: no chromium on the PATH (install Debian's chromium package, or name the browser in IDEM_CHROMIUM)");
        return;
    };
    // The page names the API's address, and calls-api the page's origin: the page's address
    // is taken first, then calls-api started on a port of the system's choosing, then the
    // page served (an address chosen free and given to calls-api could be taken meanwhile).
    let key = format!("browser-{}", std::process::id());
    let page_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_addr = page_listener.local_addr().unwrap();
    let page_origin = format!("http://{page_addr}");
    let api = CallsApi::start_at(None, &[], &["--cors-origin", &page_origin]).await;
    serve_page(page_listener, page(api.addr, &key));
    assert_ne!(page_addr.port(), api.addr.port(), "two origins");

    let url = format!("{page_origin}/page.html");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&chromium, &url))
        .await
        .unwrap();
    let result = dom
        .split_once(r#"<pre id="result">"#)
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(result, _)| result)
        .unwrap_or_else(|| panic!("no #result in the dumped DOM: {dom}"));
    assert!(
        dom.contains("<title>done</title>"),
        "the page did not finish: {result}"
    );
    let result: serde_json::Value = serde_json::from_str(result)
        .unwrap_or_else(|e| panic!("#result is not JSON ({e}): {result}"));
    assert_eq!(result["first_status"], 201, "{result}");
    assert_eq!(
        result["first_replayed"],
        serde_json::Value::Null,
        "{result}"
    );
    assert_eq!(result["second_status"], 201, "{result}");
    assert_eq!(result["second_replayed"], "true", "{result}");
    assert!(result["second_request_id"].is_string(), "{result}");
    assert_eq!(result["same_call"], true, "{result}");

    // And the server made one call for the two posts.
    let listed = RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer browser")
        .send(api.addr)
        .await
        .json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
}
