//! Structural schemas: a CRD version's `openAPIV3Schema` checked to be structural and compiled
//! once ([`Schema::compile`]) into a tree that prunes unknown fields, applies defaults and
//! validates values (types, formats, enums, patterns, bounds, required fields, list keys, CEL
//! rules) with kube-apiserver's error shapes.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use super::cel::{shown, Rule};
use crate::apiserver::error::FieldError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    /// No type: `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`.
    Any,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Object => "object",
            Ty::Array => "array",
            Ty::String => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
            Ty::Any => "any",
        }
    }
}

/// Where a value is in the object, rendered (`spec.rules[0].matches`) only for an error.
#[derive(Clone, Copy)]
pub enum Path<'a> {
    /// The start: "" for the object itself.
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(s) => f.write_str(s),
            Path::Field(Path::Root(""), k) => f.write_str(k),
            Path::Field(p, k) => write!(f, "{p}.{k}"),
            Path::Item(p, n) => write!(f, "{p}[{n}]"),
        }
    }
}

impl From<&Path<'_>> for String {
    fn from(p: &Path<'_>) -> String {
        p.to_string()
    }
}

/// How a list merges and what makes its items distinct (`x-kubernetes-list-type`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ListType {
    #[default]
    Atomic,
    Set,
    Map(Vec<String>),
}

/// One compiled node of a structural schema.
#[derive(Debug)]
pub struct Schema {
    pub ty: Ty,
    pub nullable: bool,
    pub format: Option<String>,
    enum_: Vec<Value>,
    pattern: Option<(String, Regex)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    pub(super) max_items: Option<u64>,
    min_properties: Option<u64>,
    pub(super) max_properties: Option<u64>,
    minimum: Option<(f64, bool)>,
    maximum: Option<(f64, bool)>,
    multiple_of: Option<f64>,
    required: Vec<String>,
    pub properties: BTreeMap<String, Schema>,
    /// The schema of a map's values (`additionalProperties`).
    pub additional: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded: bool,
    pub list: ListType,
    all_of: Vec<Schema>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Box<Schema>>,
    pub rules: Vec<Rule>,
}

const FORBIDDEN: &[&str] = &[
    "$ref",
    "$schema",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
];

fn uint(v: &Value, key: &str, path: &str, errs: &mut Vec<FieldError>) -> Option<u64> {
    let x = v.get(key)?;
    match x.as_u64() {
        Some(n) => Some(n),
        None => {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                x.clone(),
                "must be a non-negative integer",
            ));
            None
        }
    }
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Where a node sits, for the rules that depend on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    Field,
    /// Inside allOf/anyOf/oneOf/not: value validations only.
    Junctor,
    /// Under the root's `metadata`.
    Metadata,
}

impl Schema {
    /// A node that accepts anything (the schema of a field nothing is said about).
    pub fn any() -> Schema {
        Schema {
            ty: Ty::Any,
            nullable: false,
            format: None,
            enum_: Vec::new(),
            pattern: None,
            min_length: None,
            max_length: None,
            min_items: None,
            max_items: None,
            min_properties: None,
            max_properties: None,
            minimum: None,
            maximum: None,
            multiple_of: None,
            required: Vec::new(),
            properties: BTreeMap::new(),
            additional: None,
            items: None,
            default: None,
            preserve_unknown: true,
            int_or_string: false,
            embedded: false,
            list: ListType::Atomic,
            all_of: Vec::new(),
            any_of: Vec::new(),
            one_of: Vec::new(),
            not: None,
            rules: Vec::new(),
        }
    }

    /// Compiles a CRD version's `openAPIV3Schema` found at `path`, reporting every way it is
    /// not structural or not valid.
    pub fn compile(v: &Value, path: &str, errs: &mut Vec<FieldError>) -> Schema {
        let s = Self::node(v, path, Place::Root, errs);
        if s.ty != Ty::Object {
            errs.push(FieldError::invalid(
                format!("{path}.type"),
                s.ty.name(),
                "must be object at the root",
            ));
        }
        if let Some(meta) = v.pointer("/properties/metadata") {
            let extra: Vec<&String> = meta
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.keys()
                        .filter(|k| *k != "name" && *k != "generateName")
                        .collect()
                })
                .unwrap_or_default();
            if !extra.is_empty() {
                errs.push(FieldError::forbidden(
                    format!("{path}.properties[metadata]"),
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
        s.check_defaults(path, errs);
        s
    }

    fn node(v: &Value, path: &str, place: Place, errs: &mut Vec<FieldError>) -> Schema {
        let mut s = Schema::any();
        let Some(m) = v.as_object() else {
            errs.push(FieldError::invalid(path, "", "must be a schema object"));
            return s;
        };
        for k in FORBIDDEN {
            if m.contains_key(*k) {
                errs.push(FieldError::forbidden(
                    format!("{path}.{k}"),
                    format!("{k} is not supported in a structural schema"),
                ));
            }
        }
        if flag(v, "uniqueItems") {
            errs.push(FieldError::forbidden(
                format!("{path}.uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        s.int_or_string = flag(v, "x-kubernetes-int-or-string");
        s.preserve_unknown = flag(v, "x-kubernetes-preserve-unknown-fields");
        s.embedded = flag(v, "x-kubernetes-embedded-resource");
        s.nullable = flag(v, "nullable");
        let ty = m.get("type").and_then(Value::as_str);
        s.ty = match ty {
            Some("object") => Ty::Object,
            Some("array") => Ty::Array,
            Some("string") => Ty::String,
            Some("integer") => Ty::Integer,
            Some("number") => Ty::Number,
            Some("boolean") => Ty::Boolean,
            Some(other) => {
                errs.push(FieldError::not_supported(
                    format!("{path}.type"),
                    other,
                    &["array", "boolean", "integer", "number", "object", "string"],
                ));
                Ty::Any
            }
            None => Ty::Any,
        };
        if place == Place::Junctor {
            for k in [
                "type",
                "nullable",
                "default",
                "x-kubernetes-preserve-unknown-fields",
                "x-kubernetes-embedded-resource",
                "x-kubernetes-int-or-string",
                "x-kubernetes-list-type",
                "x-kubernetes-list-map-keys",
                "x-kubernetes-validations",
            ] {
                if m.contains_key(k) {
                    errs.push(FieldError::forbidden(
                        format!("{path}.{k}"),
                        "must be empty to be structural (inside allOf, anyOf, oneOf or not)",
                    ));
                }
            }
        } else if ty.is_none() && !s.int_or_string && !s.preserve_unknown {
            errs.push(FieldError::required(
                format!("{path}.type"),
                "must not be empty for specified object fields",
            ));
        }
        if s.int_or_string && ty.is_some() {
            errs.push(FieldError::invalid(
                format!("{path}.type"),
                ty.unwrap_or(""),
                "must be empty if x-kubernetes-int-or-string is true",
            ));
        }
        if s.embedded && s.ty != Ty::Object {
            errs.push(FieldError::required(
                format!("{path}.type"),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        }
        s.format = m.get("format").and_then(Value::as_str).map(str::to_string);
        if let Some(e) = m.get("enum").and_then(Value::as_array) {
            s.enum_ = e.clone();
        }
        if let Some(p) = m.get("pattern").and_then(Value::as_str) {
            match Regex::new(p) {
                Ok(re) => s.pattern = Some((p.to_string(), re)),
                Err(e) => errs.push(FieldError::invalid(
                    format!("{path}.pattern"),
                    p,
                    format!("must be a valid regular expression: {e}"),
                )),
            }
        }
        s.min_length = uint(v, "minLength", path, errs);
        s.max_length = uint(v, "maxLength", path, errs);
        s.min_items = uint(v, "minItems", path, errs);
        s.max_items = uint(v, "maxItems", path, errs);
        s.min_properties = uint(v, "minProperties", path, errs);
        s.max_properties = uint(v, "maxProperties", path, errs);
        s.minimum = m
            .get("minimum")
            .and_then(Value::as_f64)
            .map(|x| (x, flag(v, "exclusiveMinimum")));
        s.maximum = m
            .get("maximum")
            .and_then(Value::as_f64)
            .map(|x| (x, flag(v, "exclusiveMaximum")));
        s.multiple_of = m.get("multipleOf").and_then(Value::as_f64);
        if let Some(r) = m.get("required").and_then(Value::as_array) {
            s.required = r
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
        }
        let child = if place == Place::Junctor {
            Place::Junctor
        } else {
            Place::Field
        };
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            if place != Place::Junctor && s.ty != Ty::Object {
                errs.push(FieldError::forbidden(
                    format!("{path}.properties"),
                    "must only be used with type object",
                ));
            }
            for (k, pv) in props {
                let place = if place == Place::Root && k == "metadata" {
                    Place::Metadata
                } else {
                    child
                };
                s.properties.insert(
                    k.clone(),
                    Self::node(pv, &format!("{path}.properties[{k}]"), place, errs),
                );
            }
        }
        match m.get("additionalProperties") {
            Some(Value::Object(_)) if !s.properties.is_empty() => {
                errs.push(FieldError::forbidden(
                    format!("{path}.additionalProperties"),
                    "additionalProperties and properties are mutual exclusive",
                ));
            }
            Some(a @ Value::Object(_)) => {
                s.additional = Some(Box::new(Self::node(
                    a,
                    &format!("{path}.additionalProperties"),
                    child,
                    errs,
                )));
            }
            Some(Value::Bool(true)) => s.additional = Some(Box::new(Schema::any())),
            _ => {}
        }
        match m.get("items") {
            Some(Value::Array(_)) => errs.push(FieldError::forbidden(
                format!("{path}.items"),
                "items must be a schema object and not an array",
            )),
            Some(i) => {
                s.items = Some(Box::new(Self::node(
                    i,
                    &format!("{path}.items"),
                    child,
                    errs,
                )));
            }
            None if s.ty == Ty::Array && place != Place::Junctor => {
                errs.push(FieldError::required(
                    format!("{path}.items"),
                    "must be specified for type array",
                ));
            }
            None => {}
        }
        for (key, out) in [
            ("allOf", &mut s.all_of),
            ("anyOf", &mut s.any_of),
            ("oneOf", &mut s.one_of),
        ] {
            if let Some(list) = m.get(key).and_then(Value::as_array) {
                for (n, j) in list.iter().enumerate() {
                    out.push(Self::node(
                        j,
                        &format!("{path}.{key}[{n}]"),
                        Place::Junctor,
                        errs,
                    ));
                }
            }
        }
        if let Some(n) = m.get("not") {
            s.not = Some(Box::new(Self::node(
                n,
                &format!("{path}.not"),
                Place::Junctor,
                errs,
            )));
        }
        s.list = s.compile_list_type(v, path, errs);
        if let Some(d) = m.get("default") {
            if place == Place::Metadata {
                errs.push(FieldError::forbidden(
                    format!("{path}.default"),
                    "must not be set inside metadata",
                ));
            }
            s.default = Some(d.clone());
        }
        if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
            for (n, r) in rules.iter().enumerate() {
                match Rule::compile(r).and_then(|rule| {
                    rule.check_cost(&s).map_err(|e| ("rule", e))?;
                    Ok(rule)
                }) {
                    Ok(rule) => s.rules.push(rule),
                    Err((field, why)) => errs.push(FieldError::invalid(
                        format!("{path}.x-kubernetes-validations[{n}].{field}"),
                        r.get(field).cloned().unwrap_or(Value::Null),
                        why,
                    )),
                }
            }
        }
        s
    }

    fn compile_list_type(&self, v: &Value, path: &str, errs: &mut Vec<FieldError>) -> ListType {
        let keys: Vec<String> = v
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let lt = v.get("x-kubernetes-list-type").and_then(Value::as_str);
        if lt.is_some() && self.ty != Ty::Array {
            errs.push(FieldError::invalid(
                format!("{path}.x-kubernetes-list-type"),
                lt.unwrap_or(""),
                "must only be used if type is array",
            ));
        }
        match lt {
            Some("map") => {
                if keys.is_empty() {
                    errs.push(FieldError::required(
                        format!("{path}.x-kubernetes-list-map-keys"),
                        "must not be empty if x-kubernetes-list-type is map",
                    ));
                }
                let item = self.items.as_deref();
                if item.is_some_and(|i| i.ty != Ty::Object) {
                    errs.push(FieldError::invalid(
                        format!("{path}.items.type"),
                        item.map_or("", |i| i.ty.name()),
                        "must be object if parent array's x-kubernetes-list-type is map",
                    ));
                }
                for k in &keys {
                    let key = item.and_then(|i| i.properties.get(k));
                    let scalar = key.is_some_and(|p| {
                        matches!(p.ty, Ty::String | Ty::Integer | Ty::Number | Ty::Boolean)
                            || p.int_or_string
                    });
                    if !scalar {
                        errs.push(FieldError::invalid(
                            format!("{path}.items.properties[{k}]"),
                            k.as_str(),
                            "must be a property of scalar type for a map list key",
                        ));
                    } else if key.is_some_and(|p| p.default.is_none())
                        && !item.is_some_and(|i| i.required.contains(k))
                    {
                        errs.push(FieldError::required(
                            format!("{path}.items.required"),
                            format!("all map keys must be required or have a default value: {k}"),
                        ));
                    }
                }
                ListType::Map(keys)
            }
            Some("set") => {
                if self
                    .items
                    .as_deref()
                    .is_some_and(|i| matches!(i.ty, Ty::Object | Ty::Array))
                {
                    errs.push(FieldError::invalid(
                        format!("{path}.items.type"),
                        "object",
                        "must be a scalar type if parent array's x-kubernetes-list-type is set",
                    ));
                }
                ListType::Set
            }
            None | Some("atomic") => {
                if !keys.is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{path}.x-kubernetes-list-map-keys"),
                        "must be empty if x-kubernetes-list-type is not map",
                    ));
                }
                ListType::Atomic
            }
            Some(other) => {
                errs.push(FieldError::not_supported(
                    format!("{path}.x-kubernetes-list-type"),
                    other,
                    &["atomic", "map", "set"],
                ));
                ListType::Atomic
            }
        }
    }

    /// Every default must survive pruning unchanged and validate against its own schema.
    fn check_defaults(&self, path: &str, errs: &mut Vec<FieldError>) {
        if let Some(d) = &self.default {
            let mut pruned = d.clone();
            let mut unknown = Vec::new();
            self.prune(&mut pruned, "", false, &mut unknown);
            if !unknown.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.default"),
                    d.clone(),
                    format!("must not have unknown fields: {}", unknown.join(", ")),
                ));
            } else {
                let mut found = Vec::new();
                self.apply_defaults(&mut pruned);
                self.validate(&pruned, None, &Path::Root("default"), &mut found);
                for mut e in found {
                    e.field = format!("{path}.{}", e.field);
                    errs.push(e);
                }
            }
        }
        for (k, p) in &self.properties {
            p.check_defaults(&format!("{path}.properties[{k}]"), errs);
        }
        if let Some(i) = &self.items {
            i.check_defaults(&format!("{path}.items"), errs);
        }
        if let Some(a) = &self.additional {
            a.check_defaults(&format!("{path}.additionalProperties"), errs);
        }
    }

    /// Drops fields the schema does not specify (reported in `unknown` by path) and nulls of
    /// fields that are not nullable; `apiVersion`, `kind` and `metadata` stay at the root of
    /// the object and of embedded resources.
    pub fn prune(&self, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Object(m) => {
                let keep_meta = root || self.embedded;
                let mut drop = Vec::new();
                for (k, val) in m.iter_mut() {
                    if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    let sub = match self.properties.get(k) {
                        Some(p) => Some(p),
                        None => self.additional.as_deref(),
                    };
                    match sub {
                        Some(s) if val.is_null() && !s.nullable => drop.push((k.clone(), false)),
                        Some(s) => s.prune(val, &join(k), false, unknown),
                        None if self.preserve_unknown => {}
                        None => drop.push((k.clone(), true)),
                    }
                }
                for (k, report) in drop {
                    m.remove(&k);
                    if report {
                        unknown.push(join(&k));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for (n, i) in items.iter_mut().enumerate() {
                        s.prune(i, &format!("{path}[{n}]"), false, unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Fills in the defaults of fields left out (or null and not nullable).
    pub fn apply_defaults(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, s) in &self.properties {
                    let missing = m.get(k).is_none_or(|x| x.is_null() && !s.nullable);
                    if missing {
                        if let Some(d) = &s.default {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(x) = m.get_mut(k) {
                        s.apply_defaults(x);
                    }
                }
                if let Some(a) = &self.additional {
                    for x in m.values_mut() {
                        a.apply_defaults(x);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for i in items {
                        s.apply_defaults(i);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates `v` at `path` (and, on an update, against its old value for transition
    /// rules).
    pub fn validate(
        &self,
        v: &Value,
        old: Option<&Value>,
        path: &Path<'_>,
        errs: &mut Vec<FieldError>,
    ) {
        if !self.validate_value(v, path, errs) {
            // A value of the wrong type is not looked into further, as kube-apiserver does.
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, val) in m {
                    let sub = match self.properties.get(k) {
                        Some(p) => p,
                        None => match &self.additional {
                            Some(a) => a,
                            None => continue,
                        },
                    };
                    let o = old.and_then(|o| o.get(k));
                    sub.validate(val, o, &Path::Field(path, k), errs);
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for (n, i) in items.iter().enumerate() {
                        let o = old.and_then(|o| self.correlate(o, i));
                        s.validate(i, o, &Path::Item(path, n), errs);
                    }
                }
            }
            _ => {}
        }
        if !self.rules.is_empty() {
            super::cel::check_all(&self.rules, self, v, old, path, errs);
        }
    }

    /// The old item a new list item is the same item as: by key for map lists, by value for
    /// sets; items of atomic lists have none.
    fn correlate<'a>(&self, old: &'a Value, item: &Value) -> Option<&'a Value> {
        let list = old.as_array()?;
        match &self.list {
            ListType::Atomic => None,
            ListType::Set => list.iter().find(|o| *o == item),
            ListType::Map(keys) => list
                .iter()
                .find(|o| keys.iter().all(|k| o.get(k) == item.get(k))),
        }
    }

    /// The checks of this node alone; false when the value is not of the node's type.
    fn validate_value(&self, v: &Value, path: &Path<'_>, errs: &mut Vec<FieldError>) -> bool {
        if v.is_null() {
            if !self.nullable && self.ty != Ty::Any {
                errs.push(FieldError::invalid(
                    path,
                    "null",
                    format!(
                        "{path} in body must be of type {}: \"null\"",
                        self.ty.name()
                    ),
                ));
            }
            return false;
        }
        let actual = match v {
            Value::Object(_) => "object",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::Null => "null",
        };
        let fits = match self.ty {
            Ty::Any if self.int_or_string => matches!(actual, "integer" | "string"),
            Ty::Any => true,
            Ty::Number => matches!(actual, "integer" | "number"),
            t => t.name() == actual,
        };
        if !fits {
            let want = if self.int_or_string {
                "integer,string".to_string()
            } else {
                self.ty.name().to_string()
            };
            errs.push(FieldError::invalid(
                path,
                actual,
                format!("{path} in body must be of type {want}: \"{actual}\""),
            ));
            return false;
        }
        if !self.enum_.is_empty() && !self.enum_.contains(v) {
            errs.push(FieldError::not_supported_values(
                path,
                v.clone(),
                &self.enum_,
            ));
        }
        match v {
            Value::String(s) => self.validate_string(s, path, errs),
            Value::Number(n) => self.validate_number(n.as_f64().unwrap_or(0.0), v, path, errs),
            Value::Array(a) => {
                if let Some(max) = self.max_items.filter(|m| a.len() as u64 > *m) {
                    errs.push(FieldError::too_many(path, a.len(), max));
                }
                if let Some(min) = self.min_items.filter(|m| (a.len() as u64) < *m) {
                    errs.push(FieldError::invalid(
                        path,
                        a.len(),
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
                self.validate_unique(a, path, errs);
            }
            Value::Object(m) => {
                if let Some(max) = self.max_properties.filter(|x| m.len() as u64 > *x) {
                    errs.push(FieldError::too_many(path, m.len(), max));
                }
                if let Some(min) = self.min_properties.filter(|x| (m.len() as u64) < *x) {
                    errs.push(FieldError::invalid(
                        path,
                        m.len(),
                        format!("{path} in body should have at least {min} properties"),
                    ));
                }
                if self.embedded {
                    for f in ["apiVersion", "kind"] {
                        if m.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                            errs.push(FieldError::required(
                                &Path::Field(path, f),
                                "must not be empty",
                            ));
                        }
                    }
                }
                for r in &self.required {
                    if m.get(r).is_none_or(Value::is_null) {
                        errs.push(FieldError::required(&Path::Field(path, r), ""));
                    }
                }
            }
            _ => {}
        }
        self.validate_junctors(v, path, errs);
        true
    }

    fn validate_string(&self, s: &str, path: &Path<'_>, errs: &mut Vec<FieldError>) {
        let chars = s.chars().count() as u64;
        if let Some(max) = self.max_length.filter(|m| chars > *m) {
            errs.push(FieldError::too_long(path, max));
        }
        if let Some(min) = self.min_length.filter(|m| chars < *m) {
            errs.push(FieldError::invalid(
                path,
                s,
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some((text, re)) = &self.pattern {
            if !re.is_match(s) {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    format!("{path} in body should match '{text}'"),
                ));
            }
        }
        if let Some(f) = &self.format {
            if !super::format::valid(f, s) {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    format!("{path} in body must be of type {f}: \"{s}\""),
                ));
            }
        }
    }

    fn validate_number(&self, x: f64, v: &Value, path: &Path<'_>, errs: &mut Vec<FieldError>) {
        if let Some((max, excl)) = self.maximum {
            if x > max || (excl && x == max) {
                let how = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{path} in body should be {how} {max}"),
                ));
            }
        }
        if let Some((min, excl)) = self.minimum {
            if x < min || (excl && x == min) {
                let how = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{path} in body should be {how} {min}"),
                ));
            }
        }
        if let Some(m) = self.multiple_of.filter(|m| *m != 0.0) {
            if (x / m).fract() != 0.0 {
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{path} in body should be a multiple of {m}"),
                ));
            }
        }
        if let (Some(f), Some(i)) = (self.format.as_deref(), v.as_i64()) {
            if f == "int32" && i32::try_from(i).is_err() {
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{path} in body must be of type int32: \"{i}\""),
                ));
            }
        }
    }

    /// Items of sets, and keys of map lists, are unique.
    fn validate_unique(&self, a: &[Value], path: &Path<'_>, errs: &mut Vec<FieldError>) {
        match &self.list {
            ListType::Atomic => {}
            ListType::Set => {
                for (n, i) in a.iter().enumerate() {
                    if a[..n].contains(i) {
                        errs.push(FieldError::duplicate(&Path::Item(path, n), i.clone()));
                    }
                }
            }
            ListType::Map(keys) => {
                let key_of = |i: &Value| -> Vec<Value> {
                    keys.iter()
                        .map(|k| {
                            i.get(k)
                                .cloned()
                                .or_else(|| {
                                    self.items
                                        .as_deref()
                                        .and_then(|s| s.properties.get(k))
                                        .and_then(|p| p.default.clone())
                                })
                                .unwrap_or(Value::Null)
                        })
                        .collect()
                };
                let all: Vec<Vec<Value>> = a.iter().map(key_of).collect();
                for (n, k) in all.iter().enumerate() {
                    if all[..n].contains(k) {
                        let shown: serde_json::Map<String, Value> =
                            keys.iter().cloned().zip(k.iter().cloned()).collect();
                        errs.push(FieldError::duplicate(
                            &Path::Item(path, n),
                            Value::Object(shown),
                        ));
                    }
                }
            }
        }
    }

    fn validate_junctors(&self, v: &Value, path: &Path<'_>, errs: &mut Vec<FieldError>) {
        let passes = |s: &Schema| {
            let mut e = Vec::new();
            s.validate(v, None, path, &mut e);
            e
        };
        for s in &self.all_of {
            errs.extend(passes(s));
        }
        if !self.any_of.is_empty() && self.any_of.iter().all(|s| !passes(s).is_empty()) {
            errs.push(FieldError::invalid(
                path,
                shown(v),
                format!("{path} in body must match at least one schema in anyOf"),
            ));
        }
        if !self.one_of.is_empty() {
            let ok = self.one_of.iter().filter(|s| passes(s).is_empty()).count();
            if ok != 1 {
                errs.push(FieldError::invalid(
                    path,
                    shown(v),
                    format!("{path} in body must validate one and only one schema (oneOf)"),
                ));
            }
        }
        if let Some(n) = &self.not {
            if passes(n).is_empty() {
                errs.push(FieldError::invalid(
                    path,
                    shown(v),
                    format!("{path} in body must not validate the schema (not)"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(v: Value) -> (Schema, Vec<String>) {
        let mut errs = Vec::new();
        let s = Schema::compile(&v, "s", &mut errs);
        (s, errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn structural_rules() {
        let (_, errs) = compile(json!({"type": "object", "properties": {
            "a": {"properties": {"b": {"type": "string"}}},
            "c": {"type": "array"},
            "d": {"type": "string", "uniqueItems": true},
            "e": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "f": {"x-kubernetes-int-or-string": true, "type": "string"},
            "g": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "h": {"type": "string", "anyOf": [{"type": "string"}]},
            "i": {"type": "string", "pattern": "("},
        }}));
        for want in [
            "s.properties[a].type: Required value",
            "s.properties[c].items: Required value",
            "s.properties[d].uniqueItems: Forbidden",
            "s.properties[e].additionalProperties: Forbidden",
            "s.properties[f].type: Invalid value",
            "s.properties[g].x-kubernetes-list-map-keys: Required value",
            "s.properties[h].anyOf[0].type: Forbidden",
            "s.properties[i].pattern: Invalid value",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} not in {errs:#?}"
            );
        }
        let (_, errs) = compile(json!({"type": "string"}));
        assert!(errs[0].contains("must be object at the root"), "{errs:?}");
        let (_, errs) = compile(
            json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
        );
        assert!(
            errs[0].starts_with("s.properties[metadata]: Forbidden"),
            "{errs:?}"
        );
    }

    #[test]
    fn prune_default_and_validate() {
        let (s, errs) = compile(
            json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "a": {"type": "string", "default": "x"},
                "b": {"type": "object", "default": {}, "properties": {"c": {"type": "integer", "default": 3}}},
                "m": {"type": "object", "additionalProperties": {"type": "integer"}},
                "keep": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }}}}),
        );
        assert!(errs.is_empty(), "{errs:?}");
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"zz": 1, "a": null, "m": {"k": 1}, "keep": {"any": 1}}, "top": 2});
        let mut unknown = Vec::new();
        s.prune(&mut obj, "", true, &mut unknown);
        unknown.sort();
        assert_eq!(unknown, ["spec.zz", "top"]);
        s.apply_defaults(&mut obj);
        assert_eq!(obj["spec"]["a"], "x");
        assert_eq!(obj["spec"]["b"]["c"], 3);
        assert_eq!(obj["spec"]["keep"]["any"], 1);
        assert_eq!(obj["metadata"]["name"], "n");
        let mut errs = Vec::new();
        s.validate(&obj, None, &Path::Root(""), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        obj["spec"]["m"]["k"] = json!("one");
        s.validate(&obj, None, &Path::Root(""), &mut errs);
        assert_eq!(errs[0].to_string(), "spec.m.k: Invalid value: \"string\": spec.m.k in body must be of type integer: \"string\"");
    }
}
