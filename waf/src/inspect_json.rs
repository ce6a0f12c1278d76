//! A JSON body inspected while it is walked (see [`Engine::inspect_json_in_place`]).

use std::borrow::Cow;

use crate::build::Engine;
use crate::evaluation::Evaluation;
use crate::memo::{CleanMemo, MEMO_MAX};
use crate::parse::json::JsonPath;
use crate::parse::{self, JsonSink, Kind, Target};

/// The engine as a [`JsonSink`]: inspects each key and leaf as the walk finds it, exactly
/// as [`Engine::finish_collection`] would inspect the collected target (same decoding,
/// same memo of clean values), and gives up (`fallback`) where the collector would record
/// a limit.
pub(crate) struct JsonInspector<'e, 'a> {
    pub(crate) engine: &'e Engine,
    pub(crate) path_norm: &'e str,
    pub(crate) eval: &'e mut Evaluation,
    /// Values (borrowed from the body) that matched nothing, by kind: see the memo in
    /// [`Engine::finish_collection`]. Labels only filter findings, so a clean value is
    /// clean again under any path.
    pub(crate) clean: CleanMemo<'a>,
    pub(crate) args: usize,
    pub(crate) fallback: bool,
    /// See [`Engine::inspect_target`].
    pub(crate) scratch: String,
    /// The path of a key or leaf that a rule set or libinjection inspects, rendered.
    pub(crate) path_buf: String,
}

impl<'a> JsonInspector<'_, 'a> {
    pub(crate) fn too_long(&mut self, len: usize) -> bool {
        if len > self.engine.parse_limits.max_arg_length {
            self.fallback = true;
        }
        self.fallback
    }

    /// Whether `value` (a key or leaf as written, without escapes) is known clean as
    /// `kind`. Only values that decoding left unchanged are remembered, so a value with
    /// the same bytes is the same target: the check can come before the value's classes
    /// are even computed.
    #[inline(always)]
    pub(crate) fn known_clean(&self, kind: Kind, value: &str) -> bool {
        value.len() <= MEMO_MAX && self.clean.contains(kind, value)
    }

    /// Inspects a decoded key or leaf that was not [`JsonInspector::known_clean`], and
    /// remembers it when it is clean and `borrowed` (decoding left it as written).
    // Inlined into its callers: one call layer less per key and leaf.
    #[inline(always)]
    pub(crate) fn inspect(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &JsonPath<'_>,
        (value, class): (Cow<'_, str>, u64),
        borrowed: Option<&'a str>,
        raw_len: usize,
    ) {
        let memo = borrowed.filter(|v| v.len() <= MEMO_MAX);
        let target = Target::in_place(kind, collection, value, class, raw_len);
        let path_buf = &mut self.path_buf;
        let key = move || {
            // Moved out of the closure's capture: the key borrows the buffer for as long
            // as the inspection needs it (an `FnOnce`).
            let buf = path_buf;
            path.render_key(buf)
        };
        let clean =
            self.engine
                .inspect_target(&target, key, self.path_norm, self.eval, &mut self.scratch);
        if let Some(v) = memo.filter(|_| clean) {
            self.clean.insert(kind, v);
        }
    }
}

impl<'a> JsonSink<'a> for JsonInspector<'_, 'a> {
    fn count_arg(&mut self) -> bool {
        self.args += 1;
        if self.args > self.engine.parse_limits.max_args {
            self.fallback = true;
            return false;
        }
        true
    }

    // The memo answers most keys and leaves: that check is inlined into the walk, and
    // the inspection of a new value is a call (`text_new`). The whole of it inlined grew
    // the walk; the whole of it as one call paid a large frame for every memo hit.
    #[inline(always)]
    fn text(&mut self, kind: Kind, collection: &'static str, path: &JsonPath<'_>, value: &'a str) {
        if self.too_long(value.len()) || self.known_clean(kind, value) {
            return;
        }
        self.text_new(kind, collection, path, value);
    }

    fn owned(&mut self, kind: Kind, collection: &'static str, path: &JsonPath<'_>, value: &[u8]) {
        if self.too_long(value.len()) {
            return;
        }
        let (decoded, class) = parse::decode(value);
        self.inspect(kind, collection, path, (decoded, class), None, value.len());
    }

    /// Digits, `-`, `+`, `.`, `e`: inspected as a string leaf (a `+`, exponent only, is
    /// still decoded to a space, as the collecting path does).
    #[inline(always)]
    fn number(&mut self, path: &JsonPath<'_>, value: &'a str) {
        self.text(Kind::Arg, "Json", path, value);
    }
}

impl<'a> JsonInspector<'_, 'a> {
    /// [`JsonSink::text`] (and `number`) for a value the memo does not know.
    #[inline(never)]
    pub(crate) fn text_new(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &JsonPath<'_>,
        value: &'a str,
    ) {
        let (decoded, class) = parse::decode_text(value);
        let borrowed = match decoded {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        };
        self.inspect(
            kind,
            collection,
            path,
            (decoded, class),
            borrowed,
            value.len(),
        );
    }
}
