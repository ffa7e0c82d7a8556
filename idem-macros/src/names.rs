//! The one table of the attribute's arguments. Each row is a name, whether it takes a
//! function (written as a path), and the row of the documentation's table: what it accepts
//! and its default. The parser, its messages and the documentation all read this table, so
//! that an argument cannot be accepted without being documented, or the other way round.

macro_rules! arguments {
    ($($variant:ident $name:literal $takes:ident $values:literal $default:literal;)*) => {
        /// An argument, by name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Name {
            $($variant,)*
        }

        impl Name {
            /// Every argument, in the documentation's order.
            pub(crate) const ALL: &'static [Name] = &[$(Name::$variant,)*];

            /// The name as written in the attribute.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(Name::$variant => $name,)*
                }
            }

            /// What it accepts, as the documentation's table says.
            pub(crate) const fn values(self) -> &'static str {
                match self {
                    $(Name::$variant => $values,)*
                }
            }

            /// Whether it takes a function, named by its path (`on_replay` takes nothing
            /// else; the others take literals too).
            pub(crate) const fn takes_function(self) -> bool {
                match self {
                    $(Name::$variant => arguments!(@takes $takes),)*
                }
            }
        }

        /// The table of arguments in the attribute's documentation, each linked to its section.
        macro_rules! argument_table {
            () => {
                concat!(
                    "| argument | values | default |\n|---|---|---|\n",
                    $("| [`", $name, "`](#", $name, ") | ", $values, " | ", $default, " |\n",)*
                )
            };
        }
    };
    (@takes literal) => { false };
    (@takes function) => { true };
}

arguments! {
    Ttl "ttl" literal
        r#"a duration of 1 s to 10 years: `"30s"`, `"15m"`, `"24h"`, `"7d"`"# r#"`"24h"`"#;
    Scope "scope" function
        r#"`"api_key"`, `"basic_auth_user"`, `"principal"`, `"global"`, `"header:<Name>"`, or a function"#
        r#"`"api_key"`"#;
    Header "header" literal
        "a header name" r#"`"Idempotency-Key"`"#;
    Key "key" function
        r#"`"json:<pointer>"`, or a function"# "the `header`";
    KeyMaxLen "key_max_len" literal
        "1 to 8192" "`255`";
    Required "required" literal
        "flag" "off";
    Mismatch "mismatch" literal
        r#"`"conflict"`, `"unprocessable"`, `"replay"`"# r#"`"conflict"`"#;
    Fingerprint "fingerprint" function
        r#"`"bytes"`, `"json"`, `"form"`, or a function"# r#"`"bytes"`"#;
    FingerprintIgnore "fingerprint_ignore" literal
        r#"JSON Pointers, with `fingerprint = "json"`"# "none";
    FingerprintHeaders "fingerprint_headers" literal
        r#"header names (not with `mismatch = "replay"`)"# "none";
    InFlight "in_flight" literal
        r#"`"conflict"`, `"wait"`"# r#"`"conflict"`"#;
    WaitTimeout "wait_timeout" literal
        r#"a duration of 1 ms to 10 years, with `in_flight = "wait"`"# r#"`"10s"`"#;
    Cache "cache" literal
        r#"`"non_5xx"`, `"2xx"`"# r#"`"non_5xx"`"#;
    PerEndpoint "per_endpoint" literal
        "flag, or the endpoint's name" "off";
    Lease "lease" literal
        "a duration of 100 ms to 10 years" r#"`"60s"`"#;
    FailOpen "fail_open" literal
        "flag" "off";
    Errors "errors" literal
        r#"`"envelope"`, `"type"`, `"problem"`"# "the app's renderer";
    MaxBody "max_body" literal
        "bytes, 1 to 4294967295" "`2097152`";
    MaxResponse "max_response" literal
        "bytes, 0 (keep none) to 4294967295" "`1048576`";
    ReplaySetCookie "replay_set_cookie" literal
        "flag" "off";
    ReplayHeaders "replay_headers" literal
        "header names" "every recorded header";
    ReplayDropHeaders "replay_drop_headers" literal
        "header names" "none";
    OnReplay "on_replay" function
        "a function" "the app's hook, if any";
    Crate "crate" literal
        r#"the crate's path as a string: `"idem"`"# r#"`"idem_actix"`"#;
}

impl Name {
    /// The argument called `name`, if there is one.
    pub(crate) fn of(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|n| n.as_str() == name)
    }

    /// Every name, for the message that refuses an unknown one.
    pub(crate) fn allowed() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|n| n.as_str()).collect();
        names.join(", ")
    }

    /// The arguments that take a function, for the message that refuses a path elsewhere:
    /// "`scope`", or "`scope` and `key`".
    pub(crate) fn taking_functions() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .filter(|n| n.takes_function())
            .map(|n| format!("`{}`", n.as_str()))
            .collect();
        match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    #[test]
    fn every_name_is_found_by_its_spelling() {
        for &name in Name::ALL {
            assert_eq!(Name::of(name.as_str()), Some(name));
        }
        assert_eq!(Name::of("retries"), None);
    }

    #[test]
    fn the_documentation_table_has_a_row_per_argument() {
        let table: &str = argument_table!();
        for &name in Name::ALL {
            let row = format!("| [`{name}`](#{name}) |");
            assert!(table.contains(&row), "no row for {name}");
        }
        assert_eq!(table.lines().count(), Name::ALL.len() + 2);
    }
}
