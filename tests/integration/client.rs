//! kube-rs as a client: typed get/list/create/replace/patch/delete, list paging over a consistent
//! snapshot, resourceVersion semantics, and optimistic concurrency.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::support::Server;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        serde_json::json!({"metadata": {"name": name, "labels": {"set": "a"}}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn typed_crud() {
    let s = Server::start(&[]);
    let client = s.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 443, "targetPort": 8443}]}
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = created.spec.clone().unwrap();
    assert!(spec.cluster_ip.as_deref().unwrap().starts_with("10."));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(created.metadata.uid.as_ref().unwrap().len(), 36);
    assert!(created.metadata.creation_timestamp.is_some());

    let got = svcs.get("api").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    let patched = svcs
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"v": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["v"], "2");

    // A replace with a stale resourceVersion is a 409 Conflict.
    let mut stale = got.clone();
    stale.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
    let err = svcs
        .replace("api", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(e) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => panic!("{other}"),
    }
    let list = svcs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2, "api and kubernetes");
    svcs.delete("api", &DeleteParams::default()).await.unwrap();
    assert!(matches!(svcs.get("api").await, Err(kube::Error::Api(e)) if e.code == 404));
}

#[tokio::test]
async fn paging_is_a_consistent_snapshot() {
    let s = Server::start(&[]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..25 {
        cms.create(&PostParams::default(), &cm(&format!("c{i:02}")))
            .await
            .unwrap();
    }
    let first = cms
        .list(&ListParams::default().labels("set=a").limit(10))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().unwrap();
    // Writes between pages do not show in later pages of the same list.
    cms.create(&PostParams::default(), &cm("c99"))
        .await
        .unwrap();
    cms.delete("c20", &DeleteParams::default()).await.unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let mut cont = Some(token);
    while let Some(c) = cont {
        let page = cms
            .list(
                &ListParams::default()
                    .labels("set=a")
                    .limit(10)
                    .continue_token(&c),
            )
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        cont = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    let want: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(names, want);
    // A fresh list sees the writes.
    let now = cms.list(&ListParams::default()).await.unwrap();
    let now: Vec<String> = now
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert!(now.contains(&"c99".to_string()) && !now.contains(&"c20".to_string()));
    // An exact read of the first revision still shows c20.
    let exact = cms
        .list(
            &ListParams::default()
                .at(first.metadata.resource_version.as_deref().unwrap())
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert!(exact
        .items
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some("c20")));
}

#[tokio::test]
async fn loopback_endpoints_need_the_flag() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "local"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"]}],
        "ports": [{"port": 8080}],
    }))
    .unwrap();
    let strict = Server::start(&[]);
    let api: Api<EndpointSlice> = Api::namespaced(strict.client().await, "default");
    match api.create(&PostParams::default(), &slice).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("loopback"), "{}", e.message);
        }
        other => panic!("a loopback endpoint was accepted: {other:?}"),
    }
    let local = Server::start(&["--allow-loopback-endpoints"]);
    let api: Api<EndpointSlice> = Api::namespaced(local.client().await, "default");
    api.create(&PostParams::default(), &slice).await.unwrap();
    // Link-local stays refused even with the flag.
    let mut ll = slice.clone();
    ll.metadata.name = Some("ll".into());
    ll.endpoints[0].addresses = vec!["169.254.1.1".into()];
    assert!(api.create(&PostParams::default(), &ll).await.is_err());
}

#[tokio::test]
async fn endpointslices_hold_at_most_100_endpoints() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let s = Server::start(&[]);
    let client = s.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "big"}, "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]}})).unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..150u32 {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("big-{i}"), "labels": {"app": "big"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = serde_json::json!({"status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i / 200, i % 200 + 1),
            "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(
            &format!("big-{i}"),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .unwrap();
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let counts = crate::support::eventually_async(std::time::Duration::from_secs(20), || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=big"))
            .await
            .ok()?;
        let counts: Vec<usize> = list.items.iter().map(|s| s.endpoints.len()).collect();
        (counts.iter().sum::<usize>() == 150).then_some(counts)
    })
    .await;
    assert!(counts.iter().all(|c| *c <= 100), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
}
