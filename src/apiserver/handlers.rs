//! The verbs over HTTP: one handler per verb, each answering a parsed [`RequestInfo`] from the
//! registry, with content negotiation (JSON objects and lists, Tables for `kubectl get`, YAML and
//! protobuf request bodies) and the query options of each verb.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use super::crd;
use super::error::ApiError;
use super::http::{json_response, value_response, Api, Body, MAX_BODY};
use super::patch::{Patch, PatchType};
use super::registry::{
    DeleteOptions, FieldValidation, Guard, ListOptions, Part, Propagation, WriteOptions,
};
use super::request::{flag, RequestInfo, Verb};
use super::resources::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::watch::{self, Format, WatchOptions};

/// How much of an oversized body is read (and dropped) so that the client gets its 413.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;
/// How long a watch lasts when the client does not say (kube-apiserver: 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// What every read of a request shares: its query, and how the answer is to be shaped.
pub(super) struct Context {
    pub query: HashMap<String, String>,
    /// `Accept: ...;as=Table`: rows for `kubectl get`.
    pub table: bool,
    pub include: IncludeObject,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Context {
    pub fn new(
        query: HashMap<String, String>,
        accept: &str,
        r: &Resource,
    ) -> Result<Context, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(
            &r.kind,
            query.get("fieldSelector").map_or("", String::as_str),
        )?;
        Ok(Context {
            table: wants_table(accept),
            include: IncludeObject::parse(query.get("includeObject").map(String::as_str)),
            labels,
            fields,
            query,
        })
    }

    fn list_options(&self) -> Result<ListOptions, ApiError> {
        let q = &self.query;
        Ok(ListOptions {
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            limit: match q.get("limit").filter(|l| !l.is_empty()) {
                Some(l) => l
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
                None => 0,
            },
            continue_token: q.get("continue").cloned(),
            resource_version: q.get("resourceVersion").cloned(),
            resource_version_match: q.get("resourceVersionMatch").cloned(),
        })
    }

    fn watch_options(&self) -> Result<WatchOptions, ApiError> {
        let q = &self.query;
        let timeout = match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
            Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds {s:?} is not a number"))
            })?),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        Ok(WatchOptions {
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            resource_version: q.get("resourceVersion").cloned(),
            allow_bookmarks: flag(q, "allowWatchBookmarks"),
            send_initial_events: flag(q, "sendInitialEvents"),
            timeout,
            format: if self.table {
                Format::Table(self.include)
            } else {
                Format::Object
            },
        })
    }
}

impl Api {
    pub(super) fn get(&self, info: &RequestInfo, cx: &Context) -> Result<Response<Body>, ApiError> {
        let r = &info.resource;
        if info.subresource == Part::Scale {
            let scale = self
                .registry
                .read_scale(r, info.namespace.as_deref(), info.name())?;
            return Ok(value_response(StatusCode::OK, &scale));
        }
        let kv = self
            .registry
            .get(r, info.namespace.as_deref(), info.name())?;
        if cx.table {
            let obj = super::registry::decode(&kv)?;
            let meta = json!({"resourceVersion": kv.mod_revision.to_string()});
            let tab = table::table(r, &[obj], meta, cx.include);
            return Ok(value_response(StatusCode::OK, &tab));
        }
        Ok(json_response(StatusCode::OK, crd::present(r, kv.value)))
    }

    pub(super) fn list(
        &self,
        info: &RequestInfo,
        cx: &Context,
    ) -> Result<Response<Body>, ApiError> {
        let r = &info.resource;
        let list = self
            .registry
            .list(r, info.namespace.as_deref(), &cx.list_options()?)?;
        if cx.table {
            let objs = list
                .items
                .iter()
                .map(|b| serde_json::from_slice(b).map_err(|e| ApiError::internal(e.to_string())))
                .collect::<Result<Vec<Value>, _>>()?;
            let mut meta = json!({"resourceVersion": list.revision.to_string()});
            if let Some(c) = &list.continue_token {
                meta["continue"] = Value::String(c.clone());
            }
            return Ok(value_response(
                StatusCode::OK,
                &table::table(r, &objs, meta, cx.include),
            ));
        }
        let items: Vec<Bytes> = list.items.into_iter().map(|b| crd::present(r, b)).collect();
        let body = list_bytes(r, &items, list.revision, list.continue_token.as_deref());
        Ok(json_response(StatusCode::OK, body))
    }

    pub(super) async fn watch(
        &self,
        info: &RequestInfo,
        cx: &Context,
    ) -> Result<Response<Body>, ApiError> {
        let opts = cx.watch_options()?;
        let store = self.registry.store().clone();
        watch::wait_for_revision(store.as_ref(), opts.resource_version.as_deref()).await?;
        let rx = watch::start(
            store,
            info.resource.clone(),
            info.namespace.as_deref(),
            opts,
        )?;
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response"))
    }

    /// Create, update and patch.
    pub(super) async fn write(
        &self,
        req: Request<Incoming>,
        info: &RequestInfo,
        cx: &Context,
        guard: Option<Guard>,
    ) -> Result<Response<Body>, ApiError> {
        let (r, ns, name, part) = (
            &info.resource,
            info.namespace.as_deref(),
            info.name(),
            info.subresource,
        );
        let ua = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let mut opts = write_options(&cx.query, ua)?;
        opts.guard = guard;
        let (ct, body) = read_body(req).await?;
        if part == Part::Scale {
            return self.write_scale(info, &opts, &ct, &body).await;
        }
        let written = match info.verb {
            Verb::Create => {
                let obj = parse_body(&ct, &body)?;
                self.registry.create(r, ns, obj, &opts).await?
            }
            Verb::Update => {
                let obj = parse_body(&ct, &body)?;
                self.registry.update(r, ns, name, obj, part, &opts).await?
            }
            _ => {
                let ty = PatchType::from_content_type(&ct)
                    .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                let patch = Patch {
                    ty,
                    body: parse_body(&ct, &body)?,
                };
                self.registry.patch(r, ns, name, patch, part, &opts).await?
            }
        };
        let status = if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let mut resp = json_response(status, crd::present(r, written.object));
        for w in written.warnings.iter().take(20) {
            let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
            if let Ok(v) = header::HeaderValue::from_str(&text) {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        Ok(resp)
    }

    /// PUT or PATCH of a `scale` subresource.
    async fn write_scale(
        &self,
        info: &RequestInfo,
        opts: &WriteOptions,
        ct: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let input = parse_body(ct, body)?;
        let ty = match info.verb {
            Verb::Update => None,
            _ => Some(
                PatchType::from_content_type(ct)
                    .filter(|t| matches!(t, PatchType::Json | PatchType::Merge))
                    .ok_or_else(ApiError::strategic_unsupported)?,
            ),
        };
        let scale = self
            .registry
            .update_scale(
                &info.resource,
                info.namespace.as_deref(),
                info.name(),
                opts,
                |current| match ty {
                    None => Ok(input.clone()),
                    Some(PatchType::Json) => super::patch::json(current, &input),
                    Some(_) => super::patch::merge(current, &input),
                },
            )
            .await?;
        Ok(value_response(StatusCode::OK, &scale))
    }

    pub(super) async fn delete(
        &self,
        req: Request<Incoming>,
        info: &RequestInfo,
        cx: &Context,
    ) -> Result<Response<Body>, ApiError> {
        let (ct, body) = read_body(req).await?;
        let opts = delete_options(&cx.query, &ct, &body)?;
        let obj = self
            .registry
            .delete(
                &info.resource,
                info.namespace.as_deref(),
                info.name(),
                &opts,
            )
            .await?;
        Ok(json_response(
            StatusCode::OK,
            crd::present(&info.resource, obj),
        ))
    }

    pub(super) async fn delete_collection(
        &self,
        req: Request<Incoming>,
        info: &RequestInfo,
        cx: &Context,
    ) -> Result<Response<Body>, ApiError> {
        let r = &info.resource;
        let (ct, body) = read_body(req).await?;
        let opts = delete_options(&cx.query, &ct, &body)?;
        let list_opts = ListOptions {
            labels: cx.labels.clone(),
            fields: cx.fields.clone(),
            ..Default::default()
        };
        let list = self
            .registry
            .list(r, info.namespace.as_deref(), &list_opts)?;
        let mut deleted = Vec::new();
        for item in &list.items {
            let obj: Value =
                serde_json::from_slice(item).map_err(|e| ApiError::internal(e.to_string()))?;
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
            match self.registry.delete(r, ns, name, &opts).await {
                Ok(b) => deleted.push(crd::present(r, b)),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let revision = self.registry.store().revision();
        Ok(json_response(
            StatusCode::OK,
            list_bytes(r, &deleted, revision, None),
        ))
    }
}

fn wants_table(req_accept: &str) -> bool {
    req_accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// kube-apiserver names a manager that gives no `fieldManager` after its User-Agent's product.
fn default_manager(user_agent: Option<&str>) -> String {
    let ua = user_agent
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .trim();
    if ua.is_empty() {
        "unknown".into()
    } else {
        ua.chars().take(128).collect()
    }
}

fn write_options(
    q: &HashMap<String, String>,
    user_agent: Option<&str>,
) -> Result<WriteOptions, ApiError> {
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is not supported (Ignore, Warn, Strict)"
            )))
        }
    };
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun {other:?} is not supported (All)"
            )))
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
        field_manager: q.get("fieldManager").filter(|m| !m.is_empty()).cloned(),
        default_manager: default_manager(user_agent),
        force: flag(q, "force"),
        guard: None,
    })
}

pub(super) fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode(body);
    }
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    let yaml = matches!(ct, "application/yaml" | "application/apply-patch+yaml");
    if yaml {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// `{"kind": "<Kind>List", ...}` built from stored bytes without re-encoding them.
fn list_bytes(r: &Resource, items: &[Bytes], rv: i64, cont: Option<&str>) -> Bytes {
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut b = BytesMut::with_capacity(size + 256);
    let list_kind = match &r.custom {
        Some(v) if !v.list_kind.is_empty() => v.list_kind.clone(),
        _ => format!("{}List", r.kind),
    };
    b.put_slice(format!("{{\"kind\":\"{list_kind}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"", r.api_version()).as_bytes());
    if let Some(c) = cont {
        b.put_slice(format!(",\"continue\":\"{c}\"").as_bytes());
    }
    b.put_slice(b"},\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(item);
    }
    b.put_slice(b"]}");
    b.freeze()
}

fn delete_options(
    q: &HashMap<String, String>,
    ct: &str,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        ..Default::default()
    };
    if let Some(g) = q.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        opts.grace_period_seconds = Some(g.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {g:?} is not a number"))
        })?);
    }
    if let Some(p) = q.get("propagationPolicy").filter(|p| !p.is_empty()) {
        opts.propagation = Propagation::parse(p)?;
    }
    if q.get("orphanDependents").is_some_and(|v| v == "true") {
        opts.propagation = Propagation::Orphan;
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_body(ct, body)?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            opts.propagation = Propagation::parse(p)?;
        } else if v.get("orphanDependents") == Some(&Value::Bool(true)) {
            opts.propagation = Propagation::Orphan;
        }
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period_seconds = Some(g);
        }
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            opts.dry_run = true;
        }
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(opts)
}

/// A media-type header's value (`application/json` when absent).
pub(super) fn header_or_json(req: &Request<Incoming>, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// Reads the body, at most [`MAX_BODY`] bytes. A larger body is read on (up to
/// [`DRAIN_LIMIT`]) and dropped, so the client sees the 413 instead of a broken connection.
pub(super) async fn read_body(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let ct = header_or_json(&req, header::CONTENT_TYPE);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > DRAIN_LIMIT) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok((ct, buf.freeze()))
}
