//! A tiny JSON writer for the admin space (the library carries no serde_json: a program that
//! only uses the library stays small). Objects and arrays are built into a `String`.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal.
pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON object being written.
pub(crate) struct Obj {
    out: String,
    first: bool,
}

impl Obj {
    pub(crate) fn new() -> Self {
        Obj {
            out: String::from("{"),
            first: true,
        }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(&mut self.out, k);
        self.out.push(':');
    }

    pub(crate) fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        string(&mut self.out, v);
        self
    }

    pub(crate) fn num(mut self, k: &str, v: impl Into<f64>) -> Self {
        self.key(k);
        let v: f64 = v.into();
        if v.is_finite() {
            let _ = write!(self.out, "{v}");
        } else {
            self.out.push_str("null");
        }
        self
    }

    pub(crate) fn int(mut self, k: &str, v: u64) -> Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    pub(crate) fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// A value already encoded as JSON.
    pub(crate) fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k);
        self.out.push_str(json);
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON array of already encoded values.
pub(crate) fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, v) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&v);
    }
    out.push(']');
    out
}

/// A JSON array of strings.
pub(crate) fn strings<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    array(items.into_iter().map(|s| {
        let mut o = String::new();
        string(&mut o, s.as_ref());
        o
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nests() {
        let o = Obj::new()
            .str("a", "x\"y\\\n\u{1}")
            .int("n", 3)
            .num("f", 1.5)
            .num("nan", f64::NAN)
            .bool("b", true)
            .raw("l", &strings(["p", "q"]))
            .finish();
        assert_eq!(
            o,
            r#"{"a":"x\"y\\\n\u0001","n":3,"f":1.5,"nan":null,"b":true,"l":["p","q"]}"#
        );
    }
}
