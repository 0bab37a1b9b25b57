//! How a gateway follows its registry when the path is not clean: a watch
//! line that does not decode.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::StreamBody;
use hyper::body::Frame;
use portico_registry::model::WatchEvent;
use support::*;
use tokio::net::TcpListener;

/// What the fake registry of [`a_watch_line_that_does_not_decode_makes_the_sdk_re_list`]
/// was asked for: the `index` of each watch request.
type Asked = Arc<Mutex<Vec<String>>>;

fn watch_line(event: &WatchEvent) -> Bytes {
    Bytes::from(format!("{}\n", serde_json::to_string(event).unwrap()))
}

fn snapshot(revision: u64, ids: &[&str]) -> WatchEvent {
    WatchEvent::Snapshot {
        revision,
        instances: ids
            .iter()
            .map(|id| portico_registry::model::Instance {
                service: "svc".into(),
                id: (*id).into(),
                spec: portico_registry::model::InstanceSpec::new("127.0.0.1", 9),
                status: portico_registry::model::Status::Passing,
                registered_at_ms: 0,
                status_since_ms: 0,
                revision,
                check_failing: false,
            })
            .collect(),
        routes: Vec::new(),
    }
}

/// A registry stand-in: its first watch answer is a snapshot, a line that
/// does not decode, then a valid change; every later answer is a snapshot
/// at revision 5. Streams stay open.
async fn serve_bad_line_registry(listener: TcpListener, asked: Asked) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((s, _)) = listener.accept().await {
        let asked = asked.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                let index = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("index=")))
                    .unwrap_or("")
                    .to_string();
                let first = {
                    let mut asked = asked.lock().unwrap();
                    asked.push(index);
                    asked.len() == 1
                };
                let lines = if first {
                    vec![
                        watch_line(&snapshot(1, &["a"])),
                        Bytes::from_static(
                            b"{\"type\":\"put\",\"revision\":2,\"instance\":{oops\n",
                        ),
                        watch_line(&WatchEvent::Progress { revision: 3 }),
                    ]
                } else {
                    vec![watch_line(&snapshot(5, &["a", "c"]))]
                };
                let body = StreamBody::new(
                    stream::iter(
                        lines
                            .into_iter()
                            .map(|b| Ok::<_, Infallible>(Frame::data(b))),
                    )
                    .chain(stream::pending()),
                );
                async move {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/x-ndjson")
                            .body(body)
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Item 21: a line the SDK cannot decode may hide a change, so the watcher
/// re-lists from a snapshot instead of going on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_line_that_does_not_decode_makes_the_sdk_re_list() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked: Asked = Arc::default();
    let server = tokio::spawn(serve_bad_line_registry(listener, asked.clone()));

    let client = portico_registry::client::RegistryClient::new(&[url.as_str()]).unwrap();
    let mut watcher = client.watch(0);
    let first = tokio::time::timeout(DEADLINE, watcher.next())
        .await
        .expect("a first event");
    assert_eq!(first.revision(), 1);
    let second = tokio::time::timeout(DEADLINE, watcher.next())
        .await
        .expect("a second event");
    assert!(
        matches!(second, WatchEvent::Snapshot { revision: 5, .. }),
        "after a line it cannot decode the watcher must re-list, got {second:?}"
    );
    assert_eq!(
        *asked.lock().unwrap(),
        ["0", "0"],
        "the re-list must start from a snapshot (index 0), not from the revision after the bad line"
    );
    assert_eq!(watcher.state().borrow().resyncs, 1, "the re-list is counted");
    server.abort();
}
