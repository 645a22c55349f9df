//! List with kube-apiserver's paging: `limit` and `continue` tokens that pin the revision of the
//! first page, `resourceVersion` / `resourceVersionMatch`, and label and field selectors applied
//! while paging (so a page is filled with matches, not cut short by them).

use base64::Engine;

use super::{decode, parse_rv, store_error, ListOptions, ListResult, Registry};
use crate::apiserver::error::ApiError;
use crate::apiserver::resources::Resource;
use crate::store::{RangeRequest, StoreError};

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

impl Registry {
    pub fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let prefix = r.scope_prefix(ns);
        let (mut start, mut at) = (None, None);
        if let Some(tok) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            if opts
                .resource_version
                .as_deref()
                .is_some_and(|v| !v.is_empty())
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .filter(|t| t.start.starts_with(&prefix))
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: the token is malformed or names another resource"))?;
            start = Some(raw.start);
            at = Some(raw.rv);
        } else if let Some(rv) = opts
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
        {
            let rv = parse_rv(rv)?;
            match opts.resource_version_match.as_deref() {
                Some("Exact") => at = Some(rv),
                None | Some("") | Some("NotOlderThan") => {
                    let current = self.store.revision();
                    if rv > current {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {rv}, current: {current}"
                        )));
                    }
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported resourceVersionMatch {other:?}"
                    )))
                }
            }
        }
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut revision = at;
        loop {
            let chunk = if opts.limit == 0 {
                0
            } else {
                (opts.limit - items.len()).max(if filtered { 256 } else { 0 })
            };
            let page = self
                .store
                .range(&RangeRequest { prefix: &prefix, start_after: start.as_deref(), limit: chunk, revision })
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => store_error(other),
                })?;
            revision = Some(page.revision);
            let mut consumed_all = true;
            for (i, kv) in page.kvs.iter().enumerate() {
                if opts.limit != 0 && items.len() == opts.limit {
                    consumed_all = i == page.kvs.len();
                    break;
                }
                start = Some(kv.key.clone());
                if filtered {
                    if !opts.labels.may_match_raw(&kv.value)
                        || !opts.fields.may_match_raw(&kv.value)
                    {
                        continue;
                    }
                    let obj = decode(kv)?;
                    if !opts.labels.matches_object(&obj) || !opts.fields.matches_object(&obj) {
                        continue;
                    }
                }
                items.push(kv.value.clone());
            }
            let more = page.more || !consumed_all;
            if !more {
                return Ok(ListResult {
                    items,
                    revision: page.revision,
                    continue_token: None,
                });
            }
            if opts.limit != 0 && items.len() == opts.limit {
                let token = ContinueToken {
                    rv: page.revision,
                    start: start.unwrap_or_default(),
                };
                let raw = serde_json::to_vec(&token).expect("json");
                return Ok(ListResult {
                    items,
                    revision: page.revision,
                    continue_token: Some(
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
                    ),
                });
            }
        }
    }
}
