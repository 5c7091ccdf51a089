//! Reads `infra/terraform` the way the deployment contract test needs it: every `.tf` file
//! parsed with hcl-rs, variables from their defaults overlaid with a `.tfvars` file, locals
//! evaluated, and every resource instance (one per `for_each` key) evaluated into JSON.
//!
//! What cannot be known before `terraform apply` (a resource's computed attribute such as a
//! service account's `email`, a data source's `number`) evaluates to a placeholder string that
//! names it and is unique, so the test can follow references: a push subscription's
//! `oidc_token.service_account_email` and the env of the service it targets name the same
//! placeholder when they name the same account. Placeholders have the shape the configuration
//! parser accepts (an address for `address`, an email for `email`, digits for `number`).
//!
//! Only the Terraform functions the module uses are modelled; an unknown one is an error that
//! names it, so a change that uses a new function fails loudly here rather than being skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, BlockLabel, Body, Expression, Structure, Value};
use serde_json::Value as Json;

/// A resource or data block.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: String,
    pub name: String,
    pub body: Body,
    pub file: PathBuf,
}

/// One evaluated instance of a resource.
#[derive(Debug, Clone)]
pub struct Instance {
    pub kind: String,
    pub name: String,
    /// The `for_each` key (or `count` index as a string); `None` for a single instance.
    pub key: Option<String>,
    /// Arguments and nested blocks (each block type: an array of objects).
    pub value: Json,
}

impl Instance {
    /// `TYPE.NAME[KEY]`.
    pub fn address(&self) -> String {
        match &self.key {
            Some(k) => format!("{}.{}[{k:?}]", self.kind, self.name),
            None => format!("{}.{}", self.kind, self.name),
        }
    }

    /// The string at a `/`-separated JSON pointer (`push_config/0/push_endpoint`).
    pub fn str_at(&self, pointer: &str) -> Option<&str> {
        self.value.pointer(&format!("/{pointer}"))?.as_str()
    }
}

/// A reference that cannot be evaluated before apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub kind: String,
    pub name: String,
    pub key: Option<String>,
    pub attr: String,
}

/// The module, loaded and evaluated.
#[derive(Debug)]
pub struct Module {
    pub dir: PathBuf,
    pub variables: BTreeMap<String, Json>,
    pub locals: BTreeMap<String, Json>,
    pub resources: Vec<Resource>,
    pub data: Vec<Resource>,
    ctx_vars: Vec<(String, Value)>,
    placeholders: BTreeMap<String, Reference>,
}

/// Loading or evaluating failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TfError(pub String);

fn fail(msg: impl Into<String>) -> TfError {
    TfError(msg.into())
}

const META_ARGS: &[&str] = &[
    "for_each",
    "count",
    "depends_on",
    "provider",
    "lifecycle",
    "provisioner",
    "connection",
];

fn label(l: &BlockLabel) -> String {
    match l {
        BlockLabel::Identifier(i) => i.to_string(),
        BlockLabel::String(s) => s.clone(),
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

fn to_json(v: &Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

fn from_json(v: &Json) -> Value {
    hcl::to_value(v).unwrap_or(Value::Null)
}

/// Parses a `.tfvars` file into values.
fn tfvars(path: &Path) -> Result<BTreeMap<String, Json>, TfError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let body: Body = hcl::parse(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let ctx = Context::new();
    let mut out = BTreeMap::new();
    for a in body.attributes() {
        let v = a
            .expr
            .evaluate(&ctx)
            .map_err(|e| fail(format!("{}: {}: {e}", path.display(), a.key)))?;
        out.insert(a.key.to_string(), to_json(&v));
    }
    Ok(out)
}

impl Module {
    /// Loads every `.tf` file of `dir` (not recursively), with the variables' defaults
    /// overridden by `overrides` (a `.tfvars` file's values, then `extra`).
    ///
    /// # Errors
    /// A file that does not parse, a local or resource that does not evaluate.
    pub fn load(
        dir: &Path,
        tfvars_file: Option<&Path>,
        extra: &BTreeMap<String, Json>,
    ) -> Result<Module, TfError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| fail(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        files.sort();
        let mut m = Module {
            dir: dir.to_path_buf(),
            variables: BTreeMap::new(),
            locals: BTreeMap::new(),
            resources: vec![],
            data: vec![],
            ctx_vars: vec![],
            placeholders: BTreeMap::new(),
        };
        let mut local_exprs: BTreeMap<String, Expression> = BTreeMap::new();
        let mut defaults: BTreeMap<String, Option<Expression>> = BTreeMap::new();
        let mut text_all = String::new();
        for f in &files {
            let text =
                std::fs::read_to_string(f).map_err(|e| fail(format!("{}: {e}", f.display())))?;
            let body: Body =
                hcl::parse(&text).map_err(|e| fail(format!("{}: {e}", f.display())))?;
            text_all.push_str(&text);
            text_all.push('\n');
            for b in body.blocks() {
                let labels: Vec<String> = b.labels.iter().map(label).collect();
                match (b.identifier.as_str(), labels.as_slice()) {
                    ("variable", [name]) => {
                        defaults.insert(name.clone(), attr(&b.body, "default").cloned());
                    }
                    ("locals", []) => {
                        for a in b.body.attributes() {
                            if local_exprs
                                .insert(a.key.to_string(), a.expr.clone())
                                .is_some()
                            {
                                return Err(fail(format!("local {} defined twice", a.key)));
                            }
                        }
                    }
                    ("resource", [kind, name]) => m.resources.push(Resource {
                        kind: kind.clone(),
                        name: name.clone(),
                        body: b.body.clone(),
                        file: f.clone(),
                    }),
                    ("data", [kind, name]) => m.data.push(Resource {
                        kind: kind.clone(),
                        name: name.clone(),
                        body: b.body.clone(),
                        file: f.clone(),
                    }),
                    _ => {}
                }
            }
        }

        // Variables: defaults, then the tfvars file, then the caller's overrides.
        let base = Context::new();
        let mut given = match tfvars_file {
            Some(p) => tfvars(p)?,
            None => BTreeMap::new(),
        };
        given.extend(extra.clone());
        for (name, default) in &defaults {
            let v = match (given.get(name), default) {
                (Some(v), _) => v.clone(),
                (None, Some(e)) => to_json(
                    &e.evaluate(&base)
                        .map_err(|e| fail(format!("variable {name} default: {e}")))?,
                ),
                (None, None) => {
                    return Err(fail(format!("variable {name} has no default and no value")));
                }
            };
            m.variables.insert(name.clone(), v);
        }
        if let Some(unknown) = given.keys().find(|k| !defaults.contains_key(*k)) {
            return Err(fail(format!("a value for undeclared variable {unknown}")));
        }

        let refs = scan_references(&text_all);
        // Locals and resource placeholders depend on each other (a local names a resource's
        // email, a resource's for_each names a local): evaluate in rounds until nothing moves.
        let mut placeholder_vars: BTreeMap<String, Json> = BTreeMap::new();
        for round in 0..20 {
            let ctx = m.context(&placeholder_vars, &m.locals);
            let before = m.locals.len();
            let mut locals = m.locals.clone();
            for (name, e) in &local_exprs {
                if locals.contains_key(name) {
                    continue;
                }
                if let Ok(v) = e.evaluate(&ctx) {
                    locals.insert(name.clone(), to_json(&v));
                }
            }
            m.locals = locals;
            let (vars, placeholders) = m.placeholder_vars(&refs, &placeholder_vars)?;
            let moved = m.locals.len() != before || vars != placeholder_vars;
            placeholder_vars = vars;
            m.placeholders = placeholders;
            if !moved && round > 0 {
                break;
            }
        }
        // A local that still does not evaluate is an error, with the reason.
        let ctx = m.context(&placeholder_vars, &m.locals);
        for (name, e) in &local_exprs {
            if !m.locals.contains_key(name) {
                let why = e
                    .evaluate(&ctx)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                return Err(fail(format!("local.{name} does not evaluate: {why}")));
            }
        }
        m.ctx_vars = placeholder_vars
            .iter()
            .map(|(k, v)| (k.clone(), from_json(v)))
            .collect();
        Ok(m)
    }

    fn context(
        &self,
        placeholders: &BTreeMap<String, Json>,
        locals: &BTreeMap<String, Json>,
    ) -> Context<'static> {
        let mut ctx = Context::new();
        declare_functions(&mut ctx);
        let vars: serde_json::Map<String, Json> = self
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ctx.declare_var("var", from_json(&Json::Object(vars)));
        let locals: serde_json::Map<String, Json> =
            locals.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        ctx.declare_var("local", from_json(&Json::Object(locals)));
        ctx.declare_var(
            "path",
            from_json(&serde_json::json!({
                "module": self.dir.display().to_string(),
                "root": self.dir.display().to_string(),
            })),
        );
        for (k, v) in placeholders {
            ctx.declare_var(k.as_str(), from_json(v));
        }
        ctx
    }

    /// The placeholder objects for every referenced resource and data attribute, keyed by the
    /// resource's `for_each` keys where those evaluate.
    fn placeholder_vars(
        &self,
        refs: &BTreeSet<(bool, String, String, String)>,
        current: &BTreeMap<String, Json>,
    ) -> Result<Placeholders, TfError> {
        let ctx = self.context(current, &self.locals);
        // (is_data, kind, name) -> the instance shape and its attributes.
        let mut shapes: BTreeMap<(bool, String, String), Json> = BTreeMap::new();
        let mut placeholders = BTreeMap::new();
        for (is_data, kind, name, a) in refs {
            let block = if *is_data {
                &self.data
            } else {
                &self.resources
            };
            let Some(r) = block.iter().find(|r| &r.kind == kind && &r.name == name) else {
                continue;
            };
            // A for_each not known yet (a local of a later round) is skipped this round.
            let Ok(keys) = instance_keys(r, &ctx) else {
                continue;
            };
            let mut text = |key: Option<String>| {
                let reference = Reference {
                    kind: kind.clone(),
                    name: name.clone(),
                    key,
                    attr: a.clone(),
                };
                let t = placeholder_text(&reference);
                placeholders.insert(t.clone(), reference);
                Json::String(t)
            };
            let slot = shapes
                .entry((*is_data, kind.clone(), name.clone()))
                .or_insert_with(|| match &keys {
                    Some(InstanceKeys::Count(n)) => {
                        Json::Array(vec![
                            Json::Object(Default::default());
                            usize::try_from(*n).unwrap_or(0)
                        ])
                    }
                    _ => Json::Object(Default::default()),
                });
            match (&keys, slot) {
                (None, Json::Object(o)) => {
                    o.insert(a.clone(), text(None));
                }
                (Some(InstanceKeys::Each(ks)), Json::Object(o)) => {
                    for k in ks {
                        let v = text(Some(k.clone()));
                        if let Json::Object(per) = o
                            .entry(k.clone())
                            .or_insert_with(|| Json::Object(Default::default()))
                        {
                            per.insert(a.clone(), v);
                        }
                    }
                }
                (Some(InstanceKeys::Count(_)), Json::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        let v = text(Some(i.to_string()));
                        if let Json::Object(per) = item {
                            per.insert(a.clone(), v);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut vars: BTreeMap<String, Json> = BTreeMap::new();
        for ((is_data, kind, name), shape) in shapes {
            let by_kind = if is_data {
                let data = vars
                    .entry("data".to_string())
                    .or_insert_with(|| Json::Object(Default::default()));
                match data {
                    Json::Object(d) => d
                        .entry(kind)
                        .or_insert_with(|| Json::Object(Default::default())),
                    _ => continue,
                }
            } else {
                vars.entry(kind)
                    .or_insert_with(|| Json::Object(Default::default()))
            };
            if let Json::Object(o) = by_kind {
                o.insert(name, shape);
            }
        }
        Ok((vars, placeholders))
    }

    /// What a placeholder string stands for.
    pub fn reference(&self, text: &str) -> Option<&Reference> {
        self.placeholders.get(text)
    }

    /// The evaluated instances of every resource of `kind`.
    ///
    /// # Errors
    /// An argument that does not evaluate, naming the resource and argument.
    pub fn instances(&self, kind: &str) -> Result<Vec<Instance>, TfError> {
        let mut base = self.context(&BTreeMap::new(), &self.locals);
        for (k, v) in &self.ctx_vars {
            base.declare_var(k.as_str(), v.clone());
        }
        let mut out = vec![];
        for r in self.resources.iter().filter(|r| r.kind == kind) {
            let keys = instance_keys(r, &base)
                .map_err(|e| fail(format!("{kind}.{}: for_each/count: {e}", r.name)))?;
            let with_placeholders = |each: Option<Json>| {
                let mut c = base.clone();
                if let Some(each) = each {
                    c.declare_var("each", from_json(&each));
                    c.declare_var("count", from_json(&each));
                }
                c
            };
            let list: Vec<(Option<String>, Option<Json>)> = match keys {
                None => vec![(None, None)],
                Some(InstanceKeys::Each(ks)) => {
                    let map = self.for_each_map(r, &with_placeholders(None))?;
                    ks.into_iter()
                        .map(|k| {
                            let v = map.get(&k).cloned().unwrap_or(Json::Null);
                            (
                                Some(k.clone()),
                                Some(serde_json::json!({ "key": k, "value": v })),
                            )
                        })
                        .collect()
                }
                Some(InstanceKeys::Count(n)) => (0..n)
                    .map(|i| (Some(i.to_string()), Some(serde_json::json!({ "index": i }))))
                    .collect(),
            };
            for (key, each) in list {
                let c = with_placeholders(each);
                let value = eval_body(&r.body, &c).map_err(|e| {
                    fail(format!(
                        "{kind}.{}{}: {e}",
                        r.name,
                        key.as_ref().map(|k| format!("[{k:?}]")).unwrap_or_default()
                    ))
                })?;
                out.push(Instance {
                    kind: kind.to_string(),
                    name: r.name.clone(),
                    key,
                    value,
                });
            }
        }
        Ok(out)
    }

    fn for_each_map(
        &self,
        r: &Resource,
        ctx: &Context<'_>,
    ) -> Result<serde_json::Map<String, Json>, TfError> {
        let Some(e) = attr(&r.body, "for_each") else {
            return Ok(Default::default());
        };
        let v = e
            .evaluate(ctx)
            .map_err(|e| fail(format!("{}.{}: for_each: {e}", r.kind, r.name)))?;
        Ok(match to_json(&v) {
            Json::Object(o) => o,
            Json::Array(a) => a
                .into_iter()
                .filter_map(|x| x.as_str().map(|s| (s.to_string(), x.clone())))
                .collect(),
            _ => Default::default(),
        })
    }

    /// Every evaluated instance of every resource, for listing.
    ///
    /// # Errors
    /// As [`Module::instances`].
    pub fn all_instances(&self) -> Result<Vec<Instance>, TfError> {
        let kinds: BTreeSet<&str> = self.resources.iter().map(|r| r.kind.as_str()).collect();
        let mut out = vec![];
        for k in kinds {
            out.extend(self.instances(k)?);
        }
        Ok(out)
    }
}

/// The variables holding placeholders (`google_x`, `data`), and what each placeholder names.
type Placeholders = (BTreeMap<String, Json>, BTreeMap<String, Reference>);

enum InstanceKeys {
    Each(Vec<String>),
    Count(u64),
}

fn instance_keys(r: &Resource, ctx: &Context<'_>) -> Result<Option<InstanceKeys>, String> {
    if let Some(e) = attr(&r.body, "for_each") {
        let v = e.evaluate(ctx).map_err(|e| e.to_string())?;
        return Ok(Some(InstanceKeys::Each(match to_json(&v) {
            Json::Object(o) => o.keys().cloned().collect(),
            Json::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            other => return Err(format!("for_each is neither a map nor a set: {other}")),
        })));
    }
    if let Some(e) = attr(&r.body, "count") {
        let v = e.evaluate(ctx).map_err(|e| e.to_string())?;
        return Ok(Some(InstanceKeys::Count(
            v.as_u64().ok_or("count is not a number")?,
        )));
    }
    Ok(None)
}

fn eval_body(body: &Body, ctx: &Context<'_>) -> Result<Json, String> {
    let mut out = serde_json::Map::new();
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => {
                if META_ARGS.contains(&a.key.as_str()) {
                    continue;
                }
                let v = a
                    .expr
                    .evaluate(ctx)
                    .map_err(|e| format!("{}: {e}", a.key))?;
                out.insert(a.key.to_string(), to_json(&v));
            }
            Structure::Block(b) if b.identifier.as_str() == "dynamic" => {
                let (name, items) = eval_dynamic(b, ctx)?;
                let slot = out.entry(name).or_insert_with(|| Json::Array(vec![]));
                if let Json::Array(a) = slot {
                    a.extend(items);
                }
            }
            Structure::Block(b) => {
                if META_ARGS.contains(&b.identifier.as_str()) {
                    continue;
                }
                let v = eval_body(&b.body, ctx).map_err(|e| format!("{}.{e}", b.identifier))?;
                let slot = out
                    .entry(b.identifier.to_string())
                    .or_insert_with(|| Json::Array(vec![]));
                if let Json::Array(a) = slot {
                    a.push(v);
                }
            }
        }
    }
    Ok(Json::Object(out))
}

fn eval_dynamic(b: &Block, ctx: &Context<'_>) -> Result<(String, Vec<Json>), String> {
    let name = b
        .labels
        .first()
        .map(label)
        .ok_or("dynamic block without a label")?;
    let iterator = match attr(&b.body, "iterator") {
        Some(Expression::Variable(v)) => v.to_string(),
        _ => name.clone(),
    };
    let coll = attr(&b.body, "for_each")
        .ok_or_else(|| format!("dynamic {name}: no for_each"))?
        .evaluate(ctx)
        .map_err(|e| format!("dynamic {name}: for_each: {e}"))?;
    let pairs: Vec<(Json, Json)> = match to_json(&coll) {
        Json::Object(o) => o.into_iter().map(|(k, v)| (Json::String(k), v)).collect(),
        Json::Array(a) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Json::from(i), v))
            .collect(),
        Json::Null => vec![],
        other => return Err(format!("dynamic {name}: for_each is {other}")),
    };
    let content = b
        .body
        .blocks()
        .find(|c| c.identifier.as_str() == "content")
        .ok_or_else(|| format!("dynamic {name}: no content block"))?;
    let mut items = vec![];
    for (k, v) in pairs {
        let mut c = ctx.clone();
        c.declare_var(
            iterator.as_str(),
            from_json(&serde_json::json!({ "key": k, "value": v })),
        );
        items.push(eval_body(&content.body, &c).map_err(|e| format!("dynamic {name}: {e}"))?);
    }
    Ok((name, items))
}

/// The attributes every referenced resource gets a placeholder for, besides those named in
/// the text (an attribute read through `each.value` of a `for_each` over a resource is not).
const STANDARD_ATTRIBUTES: &[&str] = &[
    "id",
    "name",
    "email",
    "member",
    "uri",
    "self_link",
    "address",
    "instance_id",
    "number",
    "secret_id",
    "writer_identity",
];

/// `(is_data, type, name, attribute)` of every `google_*` reference in the text.
fn scan_references(text: &str) -> BTreeSet<(bool, String, String, String)> {
    fn ident(s: &str) -> (&str, &str) {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(s.len());
        (&s[..end], &s[end..])
    }
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("google_") {
        let before = rest[..i].chars().last();
        let is_data = rest[..i].ends_with("data.");
        let start_ok =
            before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '"')) || is_data;
        let (kind, after) = ident(&rest[i..]);
        rest = after;
        if !start_ok || !after.starts_with('.') {
            continue;
        }
        let (name, mut after) = ident(&after[1..]);
        // An index: [ ... ] (one level, no nested brackets in our module).
        if after.starts_with('[') {
            match after.find(']') {
                Some(j) => after = &after[j + 1..],
                None => continue,
            }
        }
        if name.is_empty() {
            continue;
        }
        // A whole resource (`for_each = google_x.y`) is referenced too: it gets the
        // standard attributes.
        let attribute = after
            .strip_prefix('.')
            .map(|a| ident(a).0)
            .unwrap_or_default();
        for a in STANDARD_ATTRIBUTES.iter().copied().chain([attribute]) {
            if !a.is_empty() {
                out.insert((is_data, kind.to_string(), name.to_string(), a.to_string()));
            }
        }
    }
    out
}

/// A placeholder of a shape the configuration parser accepts for that attribute.
pub fn placeholder_text(r: &Reference) -> String {
    let mut slug = format!("{}-{}", r.kind.trim_start_matches("google_"), r.name);
    if let Some(k) = &r.key {
        let _ = write!(slug, "-{k}");
    }
    let slug: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let hash = slug.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    match r.attr.as_str() {
        "email" => format!("{slug}@placeholder.iam.gserviceaccount.com"),
        "member" => format!("serviceAccount:{slug}@placeholder.iam.gserviceaccount.com"),
        "address" => {
            let [_, b, c, d] = hash.to_be_bytes();
            Ipv4Addr::new(10, b, c, d.max(1)).to_string()
        }
        "number" => format!("{}", 100_000_000_000_u64 + u64::from(hash)),
        a => format!("tfref-{slug}-{}", a.replace('_', "-")),
    }
}

fn num(v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("expected a number, got {v}"))
}

fn number(x: f64) -> Result<Value, String> {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        // Whole numbers stay integers, as Terraform prints them.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Value::from(x as i64));
    }
    hcl::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("{x} is not a number"))
}

fn num_floor(args: FuncArgs) -> Result<Value, String> {
    number(num(&args[0])?.floor())
}

fn num_ceil(args: FuncArgs) -> Result<Value, String> {
    number(num(&args[0])?.ceil())
}

fn num_min(args: FuncArgs) -> Result<Value, String> {
    let xs: Result<Vec<f64>, String> = args.iter().map(num).collect();
    number(xs?.into_iter().fold(f64::INFINITY, f64::min))
}

fn num_max(args: FuncArgs) -> Result<Value, String> {
    let xs: Result<Vec<f64>, String> = args.iter().map(num).collect();
    number(xs?.into_iter().fold(f64::NEG_INFINITY, f64::max))
}

fn s(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, got {v}"))
}

fn declare_functions(ctx: &mut Context<'_>) {
    let any = || ParamType::Any;
    ctx.declare_func(
        "merge",
        FuncDef::builder()
            .variadic_param(any())
            .build(|args: FuncArgs| {
                let mut out = hcl::Map::new();
                for a in args.iter() {
                    match a {
                        Value::Object(o) => out.extend(o.clone()),
                        Value::Null => {}
                        other => return Err(format!("merge: not an object: {other}")),
                    }
                }
                Ok(Value::Object(out))
            }),
    );
    ctx.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .param(any())
            .build(|args: FuncArgs| {
                let sep = s(&args[0])?;
                let items = args[1].as_array().ok_or("join: not a list")?;
                let parts: Result<Vec<String>, String> = items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        Value::Number(n) => Ok(n.to_string()),
                        Value::Bool(b) => Ok(b.to_string()),
                        other => Err(format!("join: not a string: {other}")),
                    })
                    .collect();
                Ok(Value::String(parts?.join(sep)))
            }),
    );
    ctx.declare_func(
        "tostring",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            Ok(Value::String(match &args[0] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("tostring: {other}")),
            }))
        }),
    );
    ctx.declare_func(
        "keys",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            let o = args[0].as_object().ok_or("keys: not a map")?;
            Ok(Value::Array(o.keys().cloned().map(Value::String).collect()))
        }),
    );
    ctx.declare_func(
        "values",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            let o = args[0].as_object().ok_or("values: not a map")?;
            Ok(Value::Array(o.values().cloned().collect()))
        }),
    );
    ctx.declare_func(
        "contains",
        FuncDef::builder()
            .param(any())
            .param(any())
            .build(|args: FuncArgs| {
                let l = args[0].as_array().ok_or("contains: not a list")?;
                Ok(Value::Bool(l.contains(&args[1])))
            }),
    );
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String, ParamType::String])
            .build(|args: FuncArgs| {
                let (h, from, to) = (s(&args[0])?, s(&args[1])?, s(&args[2])?);
                if from.starts_with('/') && from.ends_with('/') && from.len() > 1 {
                    return Err("replace: regular expressions are not modelled".into());
                }
                Ok(Value::String(h.replace(from, to)))
            }),
    );
    ctx.declare_func(
        "lower",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|args: FuncArgs| Ok(Value::String(s(&args[0])?.to_lowercase()))),
    );
    ctx.declare_func(
        "length",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            let n = match &args[0] {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                Value::String(s) => s.chars().count(),
                other => return Err(format!("length: {other}")),
            };
            Ok(Value::from(n as u64))
        }),
    );
    ctx.declare_func(
        "flatten",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            fn flat(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
                    other => out.push(other.clone()),
                }
            }
            let mut out = vec![];
            flat(&args[0], &mut out);
            Ok(Value::Array(out))
        }),
    );
    ctx.declare_func(
        "concat",
        FuncDef::builder()
            .variadic_param(any())
            .build(|args: FuncArgs| {
                let mut out = vec![];
                for a in args.iter() {
                    out.extend(a.as_array().ok_or("concat: not a list")?.iter().cloned());
                }
                Ok(Value::Array(out))
            }),
    );
    for name in ["toset", "distinct", "sort"] {
        ctx.declare_func(
            name,
            FuncDef::builder().param(any()).build(|args: FuncArgs| {
                let mut seen = vec![];
                for v in args[0].as_array().ok_or("not a list")? {
                    if !seen.contains(v) {
                        seen.push(v.clone());
                    }
                }
                Ok(Value::Array(seen))
            }),
        );
    }
    ctx.declare_func(
        "tolist",
        FuncDef::builder()
            .param(any())
            .build(|args: FuncArgs| Ok(args[0].clone())),
    );
    ctx.declare_func(
        "tomap",
        FuncDef::builder()
            .param(any())
            .build(|args: FuncArgs| Ok(args[0].clone())),
    );
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .param(any())
            .param(ParamType::String)
            .variadic_param(any())
            .build(|args: FuncArgs| {
                let o = args[0].as_object().ok_or("lookup: not a map")?;
                let k = s(&args[1])?;
                match (o.get(k), args.get(2)) {
                    (Some(v), _) => Ok(v.clone()),
                    (None, Some(d)) => Ok(d.clone()),
                    (None, None) => Err(format!("lookup: no key {k}")),
                }
            }),
    );
    ctx.declare_func(
        "format",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(any())
            .build(|args: FuncArgs| {
                let mut out = String::new();
                let mut vals = args.variadic_args();
                let mut chars = s(&args[0])?.chars().peekable();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('%') => out.push('%'),
                        Some('s' | 'd' | 'v') => match vals.next() {
                            Some(Value::String(s)) => out.push_str(s),
                            Some(v) => out.push_str(&v.to_string()),
                            None => return Err("format: too few arguments".into()),
                        },
                        other => return Err(format!("format: verb {other:?} not modelled")),
                    }
                }
                Ok(Value::String(out))
            }),
    );
    ctx.declare_func(
        "floor",
        FuncDef::builder().param(ParamType::Number).build(num_floor),
    );
    ctx.declare_func(
        "ceil",
        FuncDef::builder().param(ParamType::Number).build(num_ceil),
    );
    for name in ["min", "max"] {
        ctx.declare_func(
            name,
            FuncDef::builder()
                .variadic_param(ParamType::Number)
                .build(if name == "min" { num_min } else { num_max }),
        );
    }
    ctx.declare_func(
        "jsonencode",
        FuncDef::builder().param(any()).build(|args: FuncArgs| {
            serde_json::to_string(&to_json(&args[0]))
                .map(Value::String)
                .map_err(|e| e.to_string())
        }),
    );
    ctx.declare_func(
        "base64encode",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|args: FuncArgs| {
                use base64::Engine as _;
                Ok(Value::String(
                    base64::engine::general_purpose::STANDARD.encode(s(&args[0])?),
                ))
            }),
    );
    // file() and templatefile() read the file (templatefile does not render: the test
    // compares the files themselves).
    for name in ["file", "templatefile"] {
        ctx.declare_func(
            name,
            FuncDef::builder()
                .param(ParamType::String)
                .variadic_param(any())
                .build(|args: FuncArgs| {
                    let p = s(&args[0])?;
                    std::fs::read_to_string(p)
                        .map(Value::String)
                        .map_err(|e| format!("file({p}): {e}"))
                }),
        );
    }
    ctx.declare_func(
        "cidrhost",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::Number)
            .build(|args: FuncArgs| {
                let net: ipnet::Ipv4Net =
                    s(&args[0])?.parse().map_err(|e| format!("cidrhost: {e}"))?;
                let n = args[1].as_u64().ok_or("cidrhost: host number")?;
                let ip = u32::from(net.network())
                    .checked_add(u32::try_from(n).map_err(|e| e.to_string())?)
                    .ok_or("cidrhost: overflow")?;
                let ip = Ipv4Addr::from(ip);
                if !net.contains(&ip) {
                    return Err(format!("cidrhost: host {n} outside {net}"));
                }
                Ok(Value::String(ip.to_string()))
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_in_text() {
        let refs = scan_references(
            r#"x = google_service_account.runtime[each.key].writer_thing
               y = "${data.google_project.this.number}"
               for_each = google_cloud_run_v2_service.function
               resource "google_pubsub_topic" "dead" {}"#,
        );
        let has = |d: bool, k: &str, n: &str, a: &str| {
            refs.contains(&(d, k.to_string(), n.to_string(), a.to_string()))
        };
        assert!(has(
            false,
            "google_service_account",
            "runtime",
            "writer_thing"
        ));
        assert!(has(false, "google_service_account", "runtime", "email"));
        assert!(has(true, "google_project", "this", "number"));
        assert!(has(
            false,
            "google_cloud_run_v2_service",
            "function",
            "name"
        ));
        // A block label is not a reference.
        assert!(!refs.iter().any(|(_, k, _, _)| k == "google_pubsub_topic"));
    }
}
