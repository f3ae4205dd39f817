//! Partial replicas (`kafkafs slave --include/--exclude`): which paths a
//! replica holds, and what a record becomes on it. Pure: records in,
//! plans out; the replay carries the plans out.
//!
//! A pattern is a path of glob components (`*` any run of bytes within a
//! component, `?` one byte). An include names subtrees from the root
//! (`docs`, `projects/*/src`); an exclude with a `/` likewise, one without
//! names entries anywhere (`*.tmp`, `node_modules`). A path is in view
//! when no exclude matches it or one of its ancestors and, if there are
//! includes, one matches it or an ancestor — or it lies on the way to one
//! (the ancestors an include needs, such as `projects` and `projects/x`).

use crate::op::{Op, RelPath};

/// Why a filter was refused.
#[derive(Debug, thiserror::Error)]
#[error("filter pattern `{pattern}`: {why}")]
pub struct FilterError {
    /// The pattern as given.
    pub pattern: String,
    /// Why it is refused.
    pub why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    text: String,
    components: Vec<Vec<u8>>,
    /// Matches from the root (else: any component, at any depth).
    anchored: bool,
}

impl Pattern {
    fn parse(text: &str, always_anchored: bool) -> Result<Pattern, FilterError> {
        let refuse = |why| FilterError {
            pattern: text.to_string(),
            why,
        };
        let trimmed = text.trim_start_matches('/').trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(refuse("empty"));
        }
        let components: Vec<Vec<u8>> = trimmed.split('/').map(|c| c.as_bytes().to_vec()).collect();
        if components
            .iter()
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(refuse("empty, `.` and `..` components are not allowed"));
        }
        if components.iter().any(|c| c.contains(&0)) {
            return Err(refuse("a NUL byte"));
        }
        Ok(Pattern {
            text: text.to_string(),
            anchored: always_anchored || text.contains('/'),
            components,
        })
    }

    /// Does it match `path` or one of its ancestors?
    fn covers(&self, path: &[&[u8]]) -> bool {
        if !self.anchored {
            return path.iter().any(|c| glob(&self.components[0], c));
        }
        path.len() >= self.components.len()
            && self.components.iter().zip(path).all(|(p, c)| glob(p, c))
    }

    /// Is `path` a proper ancestor of something it may match?
    fn leads_to(&self, path: &[&[u8]]) -> bool {
        path.len() < self.components.len()
            && self.components.iter().zip(path).all(|(p, c)| glob(p, c))
    }
}

/// `*` and `?` over one path component.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// What a record does to a partial replica.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Apply the record as it is (every path it names is in view).
    pub apply: bool,
    /// An entry that left the view (renamed or exchanged out of it):
    /// removed from the replica, a whole subtree for a directory.
    pub remove: Option<RelPath>,
    /// An entry that entered the view from outside it (renamed in, or a
    /// hard link to an entry outside): its content was never replicated
    /// here, so the replica lacks it (reported).
    pub gap: Option<RelPath>,
    /// Directories in view whose entries changed outside it: their mtime
    /// moves to the record's time, as on the master.
    pub touch: Vec<RelPath>,
}

/// The include and exclude patterns of a partial replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Filter {
    /// A filter letting through what `include` names (everything when empty) except what `exclude` names.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, FilterError> {
        Ok(Filter {
            include: include
                .iter()
                .map(|p| Pattern::parse(p, true))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Pattern::parse(p, false))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Does it let everything through?
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The filter as written to the replica's state folder (one pattern a
    /// line, `include ` or `exclude ` first), compared at every start.
    pub fn spec(&self) -> String {
        let mut out = String::new();
        for p in &self.include {
            out += &format!("include {}\n", p.text);
        }
        for p in &self.exclude {
            out += &format!("exclude {}\n", p.text);
        }
        out
    }

    /// Is `path` part of this replica?
    pub fn in_view(&self, path: &RelPath) -> bool {
        let comps: Vec<&[u8]> = path.components().collect();
        if comps.is_empty() {
            return true;
        }
        if self.exclude.iter().any(|p| p.covers(&comps)) {
            return false;
        }
        self.include.is_empty()
            || self
                .include
                .iter()
                .any(|p| p.covers(&comps) || p.leads_to(&comps))
    }

    /// What `op` does to a replica holding only what is in view.
    pub fn plan(&self, op: &Op) -> Plan {
        match op {
            Op::Rename { src, dst, flags } => self.plan_rename(src, dst, flags.exchange),
            Op::Link { src, dst } => self.plan_link(src, dst),
            _ => {
                let target = op.target();
                if self.in_view(target) {
                    Plan {
                        apply: true,
                        ..Plan::default()
                    }
                } else {
                    Plan {
                        touch: self.parents_in_view(op.is_namespace(), [target]),
                        ..Plan::default()
                    }
                }
            }
        }
    }

    fn plan_rename(&self, src: &RelPath, dst: &RelPath, exchange: bool) -> Plan {
        let touch = |s: &Self| s.parents_in_view(true, [src, dst]);
        match (self.in_view(src), self.in_view(dst)) {
            (true, true) => Plan {
                apply: true,
                ..Plan::default()
            },
            (false, false) => Plan {
                touch: touch(self),
                ..Plan::default()
            },
            // Out of view: src's entry goes. An exchange brings the other
            // entry (unknown here) in at src.
            (true, false) => Plan {
                remove: Some(src.clone()),
                gap: exchange.then(|| src.clone()),
                touch: touch(self),
                ..Plan::default()
            },
            (false, true) => Plan {
                remove: exchange.then(|| dst.clone()),
                gap: Some(dst.clone()),
                touch: touch(self),
                ..Plan::default()
            },
        }
    }

    fn plan_link(&self, src: &RelPath, dst: &RelPath) -> Plan {
        match (self.in_view(src), self.in_view(dst)) {
            (true, true) => Plan {
                apply: true,
                ..Plan::default()
            },
            (false, true) => Plan {
                gap: Some(dst.clone()),
                touch: self.parents_in_view(true, [dst]),
                ..Plan::default()
            },
            (_, false) => Plan {
                touch: self.parents_in_view(true, [dst]),
                ..Plan::default()
            },
        }
    }

    /// The parents in view of `paths` (none unless `namespace`).
    fn parents_in_view<'a>(
        &self,
        namespace: bool,
        paths: impl IntoIterator<Item = &'a RelPath>,
    ) -> Vec<RelPath> {
        if !namespace {
            return Vec::new();
        }
        let mut out: Vec<RelPath> = Vec::new();
        for parent in paths.into_iter().filter_map(RelPath::parent) {
            if self.in_view(&parent) && !out.contains(&parent) {
                out.push(parent);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::RenameFlags;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn globs_match_within_a_component() {
        assert!(glob(b"*.tmp", b"a.tmp"));
        assert!(glob(b"*.tmp", b".tmp"));
        assert!(!glob(b"*.tmp", b"a.tmpx"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"*", b""));
        assert!(glob(b"x*y*z", b"x--y--z"));
    }

    #[test]
    fn includes_are_subtrees_with_the_way_to_them() {
        let f = filter(&["docs", "projects/*/src"], &[]);
        for yes in [
            "",
            "docs",
            "docs/a/b",
            "projects",
            "projects/x",
            "projects/x/src",
            "projects/x/src/m.rs",
        ] {
            assert!(f.in_view(&p(yes)), "{yes}");
        }
        for no in [
            "other",
            "docsx",
            "projects/x/lib",
            "projects/x/lib/y",
            "x/docs",
        ] {
            assert!(!f.in_view(&p(no)), "{no}");
        }
    }

    #[test]
    fn excludes_win_and_unanchored_ones_match_at_any_depth() {
        let f = filter(&["docs"], &["*.tmp", "docs/private"]);
        assert!(f.in_view(&p("docs/a")));
        assert!(!f.in_view(&p("docs/a.tmp")));
        assert!(!f.in_view(&p("docs/x.tmp/inner")));
        assert!(!f.in_view(&p("docs/private")));
        assert!(!f.in_view(&p("docs/private/deep")));
        assert!(f.in_view(&p("docs/sub/private")));
        let only_exclude = filter(&[], &["node_modules"]);
        assert!(only_exclude.in_view(&p("a/b")));
        assert!(!only_exclude.in_view(&p("a/node_modules/x")));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_text() {
        for bad in ["", "/", "a/../b", "a//b", "./a"] {
            let e = Filter::new(&[bad.to_string()], &[]).unwrap_err();
            assert_eq!(e.pattern, bad);
        }
    }

    #[test]
    fn records_become_plans() {
        let f = filter(&["docs"], &["*.tmp"]);
        let write = |path: &str| Op::Write {
            path: p(path),
            offset: 0,
            data: vec![1].into(),
        };
        assert!(f.plan(&write("docs/a")).apply);
        assert_eq!(f.plan(&write("other/a")), Plan::default());
        // A namespace change outside the view moves its parent's mtime.
        let create = Op::Create {
            path: p("docs/x.tmp"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            f.plan(&create),
            Plan {
                touch: vec![p("docs")],
                ..Plan::default()
            }
        );
        let rename = |src: &str, dst: &str, exchange: bool| Op::Rename {
            src: p(src),
            dst: p(dst),
            flags: RenameFlags {
                noreplace: false,
                exchange,
            },
        };
        assert!(f.plan(&rename("docs/a", "docs/b", false)).apply);
        let out = f.plan(&rename("docs/a", "other/a", false));
        assert_eq!(out.remove, Some(p("docs/a")));
        assert_eq!(out.gap, None);
        assert_eq!(out.touch, vec![p("docs")]);
        let into = f.plan(&rename("other/a", "docs/a", false));
        assert_eq!((into.remove, into.gap), (None, Some(p("docs/a"))));
        let swap = f.plan(&rename("docs/a", "docs/a.tmp", true));
        assert_eq!(
            (swap.remove, swap.gap),
            (Some(p("docs/a")), Some(p("docs/a")))
        );
        let link = Op::Link {
            src: p("other/f"),
            dst: p("docs/f"),
        };
        assert_eq!(f.plan(&link).gap, Some(p("docs/f")));
    }
}
