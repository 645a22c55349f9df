//! Watch semantics: resuming from a resourceVersion without synthetic events, 410 Expired for a
//! compacted revision, bookmarks, timeouts, selectors, and kube-rs watchers that survive a server
//! restart.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;

use crate::support::{eventually_async, free_port, Server};

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        serde_json::json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> WatchEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("event ok")
}

#[tokio::test]
async fn resume_from_revision_and_selectors() {
    let s = Server::start(&[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let a = cms
        .create(
            &PostParams::default(),
            &cm("a", serde_json::json!({"w": "yes"})),
        )
        .await
        .unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    cms.create(
        &PostParams::default(),
        &cm("b", serde_json::json!({"w": "no"})),
    )
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("c", serde_json::json!({"w": "yes"})),
    )
    .await
    .unwrap();
    // From rv: only what came after, no synthetic ADDED for "a".
    let mut stream = cms
        .watch(&WatchParams::default().labels("w=yes"), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("c")),
        other => panic!("{other:?}"),
    }
    // A label change that leaves the selection is a DELETED for this watcher.
    cms.patch(
        "c",
        &Default::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"w": "no"}}})),
    )
    .await
    .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("c")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn initial_events_bookmark_and_timeout() {
    let s = Server::start(&[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    cms.create(&PostParams::default(), &cm("x", serde_json::json!({})))
        .await
        .unwrap();
    let wp = WatchParams::default().initial_events().timeout(2);
    let events: Vec<WatchEvent<ConfigMap>> = cms
        .watch(&wp, "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        matches!(&events[0], WatchEvent::Added(o) if o.metadata.name.as_deref() == Some("x")),
        "{events:?}"
    );
    match &events[1] {
        WatchEvent::Bookmark(b) => assert_eq!(
            b.metadata
                .annotations
                .get("k8s.io/initial-events-end")
                .map(String::as_str),
            Some("true")
        ),
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    // The stream ended by itself after timeoutSeconds.
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn too_old_revision_is_410_and_kube_watcher_recovers_after_restart() {
    let port = free_port();
    let mut s = Server::start_at(port, &[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let first = cms
        .create(&PostParams::default(), &cm("before", serde_json::json!({})))
        .await
        .unwrap();
    let old_rv = first.metadata.resource_version.clone().unwrap();
    cms.create(
        &PostParams::default(),
        &cm("before2", serde_json::json!({})),
    )
    .await
    .unwrap();

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let w = watcher(cms.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut w = w.boxed();
        while let Some(ev) = w.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                seen2.lock().unwrap().push(o.metadata.name.unwrap());
            }
        }
    });
    eventually_async(Duration::from_secs(10), || async {
        seen.lock()
            .unwrap()
            .contains(&"before2".to_string())
            .then_some(())
    })
    .await;

    // The restart drops every watch, and (with no history kept) old revisions are gone.
    s.crash_and_restart(&["--compaction-interval", "0s"]);
    let events: Vec<WatchEvent<ConfigMap>> = cms
        .watch(&WatchParams::default().timeout(2), &old_rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match &events[0] {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    cms.create(&PostParams::default(), &cm("after", serde_json::json!({})))
        .await
        .unwrap();
    eventually_async(Duration::from_secs(30), || async {
        seen.lock()
            .unwrap()
            .contains(&"after".to_string())
            .then_some(())
    })
    .await;
    task.abort();
    assert!(cms.list(&ListParams::default()).await.unwrap().items.len() >= 3);
}

/// A watch from a resourceVersion the server has not reached waits for it (about 3 s, as
/// kube-apiserver), then ends with 504 "Too large resource version"; one the server reaches in
/// time proceeds from there.
#[tokio::test]
async fn a_watch_from_the_future_waits_then_times_out() {
    let s = Server::start(&[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let rv: i64 = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    // With curl: kube-rs retries a 504 on its own.
    let dir = s.dir.path();
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["-w", "\n%{http_code}"])
        .arg(format!(
            "https://{}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={}",
            s.addr,
            rv + 1000
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.ends_with("504"), "{out}");
    assert!(
        out.contains("Too large resource version") && out.contains("ResourceVersionTooLarge"),
        "{out}"
    );
    // The next revision, written while the watch waits.
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cms.create(&PostParams::default(), &cm("soon", serde_json::json!({})))
                .await
                .unwrap();
        })
    };
    let mut stream = cms
        .watch(&WatchParams::default(), &(rv + 1).to_string())
        .await
        .unwrap()
        .boxed();
    writer.await.unwrap();
    let more = cms
        .create(&PostParams::default(), &cm("after", serde_json::json!({})))
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name, more.metadata.name),
        other => panic!("{other:?}"),
    }
}

/// A watcher that stops reading is cut off once its buffer stays full, while writers and a
/// watcher that reads go on and see every event.
#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_that_stops_reading_is_dropped() {
    let s = Server::start(&[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    // Two clients, so the stalled watch has a connection of its own.
    let stalled_api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let mut stalled = stalled_api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let reader = {
        let mut live = cms
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        tokio::spawn(async move {
            let mut added = 0;
            while added < 200 {
                match tokio::time::timeout(Duration::from_secs(60), live.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(_)))) => added += 1,
                    Ok(Some(Ok(_))) => {}
                    other => panic!(
                        "the reading watcher stopped: {:?}",
                        other.map(|o| o.is_some())
                    ),
                }
            }
            added
        })
    };
    // 200 objects of 100 KiB: far more than socket buffers and the watch's own buffer hold.
    let big = "x".repeat(100 * 1024);
    for i in 0..200 {
        let obj: ConfigMap = serde_json::from_value(
            serde_json::json!({"metadata": {"name": format!("big-{i}")}, "data": {"k": big}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &obj).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 200);
    // The stalled watch was ended: reading it now gives fewer events than were written, then
    // its end.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stalled.next()).await {
            Ok(Some(Ok(_))) => seen += 1,
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("the stalled watch is still open after {seen} events"),
        }
    }
    assert!(seen < 200, "the stalled watcher got all {seen} events");
}

/// A continue token older than the history the server keeps gets 410 Expired, as kube's does;
/// the client then starts the list again.
#[tokio::test]
async fn a_continue_token_past_the_history_is_410() {
    let s = Server::start(&["--compaction-interval", "1s"]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("page-{i}"), serde_json::json!({})),
        )
        .await
        .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("a continue token");
    // A page within the history is served at the first page's revision.
    let second = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 2);
    // Once the history no longer holds every change since its revision, the token is too old.
    cms.create(
        &PostParams::default(),
        &cm("between", serde_json::json!({})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cms.create(&PostParams::default(), &cm("later", serde_json::json!({})))
        .await
        .unwrap();
    match cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
            assert!(e.message.contains("continue parameter is too old"), "{e:?}");
        }
        other => panic!(
            "expected 410 Expired, got {:?}",
            other.map(|l| l.items.len())
        ),
    }
}
