//! Responses to an allowed request, read for list results: how the body
//! comes ([`BodyForm`]), what a request's list filtering carries
//! ([`ListJob`], [`ListPhase`]) and the helpers that find, name and trim
//! a result's list through the policy's `visible` rule.

use super::EventSplitter;
use serde_json::Value;

/// How the responses of an allowed request to an MCP service are read.
/// Every list result that reaches the client passes through the policy's
/// `visible` rule: the answer to this request, when it is a list request
/// (`field`), is filtered on the request's input document with the listed
/// names added; any other list result on the same response (on an event
/// stream opened by GET, a resumed stream, a second message) cannot be
/// tied to the request the policy saw and is refused in place.
#[derive(Debug, Clone, PartialEq)]
pub struct ListJob {
    /// The list field of this request's answer, for a list request.
    pub(crate) field: Option<&'static str>,
    /// The request's input document (a list request's; else null).
    pub(crate) doc: regorus::Value,
    pub(crate) private: bool,
    pub(crate) form: Option<BodyForm>,
    /// The request's decision key, when decisions are cached.
    pub(crate) key: Option<Vec<u8>>,
    /// A `tools/list` of a service with pinned tool definitions: the
    /// policy's pins and the service.
    pub(crate) pins: Option<(std::rc::Rc<super::pins::Pins>, String)>,
    /// Tools the answer showed changed since they were pinned (for the
    /// decision record).
    pub(crate) changed: Vec<String>,
    /// A request to a service with pinned tools: its JSON answer is read
    /// too, so that a server cannot hand the client a list (unfiltered,
    /// undigested) as the answer to another request.
    pub(crate) guarded: bool,
    /// An event stream's incomplete tail.
    pub(crate) events: EventSplitter,
    pub(crate) phase: ListPhase,
}

/// How far a response has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListPhase {
    /// Reading messages.
    #[default]
    Reading,
    /// A JSON answer went out: nothing follows it.
    Through,
    /// Refused at its headers (compressed, or of a type the filter cannot
    /// read): its first chunk becomes the JSON-RPC error.
    Refused,
    /// It could not be filtered and ended as a JSON-RPC error: the rest of
    /// the body is dropped.
    Failed,
}

/// The list methods whose results are filtered, and the field of the
/// result that holds the list.
pub fn list_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "prompts/list" => Some("prompts"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        _ => None,
    }
}

/// Every result field [`list_field`] names.
pub const LIST_FIELDS: [&str; 4] = ["tools", "prompts", "resources", "resourceTemplates"];

/// The list fields a JSON-RPC response's `result` holds (as arrays).
pub fn list_fields_of(v: &Value) -> Vec<&'static str> {
    let Some(result) = v.get("result").and_then(Value::as_object) else {
        return Vec::new();
    };
    LIST_FIELDS
        .into_iter()
        .filter(|f| result.get(*f).is_some_and(Value::is_array))
        .collect()
}

/// A JSON-RPC response body in one of the forms Streamable HTTP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// `application/json`: one JSON-RPC message.
    Json,
    /// `text/event-stream`: events whose `data` are JSON-RPC messages.
    Sse,
}

impl BodyForm {
    /// The form of a response, from its `content-type`.
    pub fn of(content_type: &str) -> Option<BodyForm> {
        let media = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some(BodyForm::Json),
            "text/event-stream" => Some(BodyForm::Sse),
            _ => None,
        }
    }
}

/// The names a list result shows (`result.<field>[].name`, `uri` for
/// resources, `uriTemplate` for resource templates), when `v` is a JSON-RPC response holding such a list.
pub fn list_names(v: &Value, field: &str) -> Option<Vec<String>> {
    let items = v.get("result")?.get(field)?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|item| item_name(item, field))
            .map(str::to_string)
            .collect(),
    )
}

/// Keeps only the list entries `keep` accepts (an entry without a name is
/// dropped); `private` marks the result `cacheScope: "private"`
/// (2026-07-28). Does nothing to a message that holds no list.
pub fn retain_listed(v: &mut Value, field: &str, private: bool, keep: impl Fn(&str) -> bool) {
    let Some(result) = v.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) else {
        return;
    };
    items.retain(|item| item_name(item, field).is_some_and(&keep));
    if private {
        result.insert("cacheScope".into(), Value::from("private"));
    }
}

fn item_name<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    let key = match field {
        "resources" => "uri",
        "resourceTemplates" => "uriTemplate",
        _ => "name",
    };
    item.get(key)?.as_str()
}
