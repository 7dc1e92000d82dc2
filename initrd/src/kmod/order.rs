//! Load ordering: a deterministic topological sort of the chosen modules.
//!
//! Hard dependencies (modules.dep) can never form a cycle in a tree depmod
//! accepted, so a cycle among them is an error. Soft dependencies are only
//! hints, and nothing stops two modules from naming each other, so a soft
//! edge that would close a cycle is dropped (with a warning), as modprobe
//! effectively does by not recursing into softdeps twice.

use std::collections::{BTreeMap, BTreeSet};

use super::KmodError;

/// "`before` must be loaded before `after`".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub before: String,
    pub after: String,
}

/// A module in load order with everything that must be loaded before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    pub name: String,
    /// The transitive set of predecessors, in load order.
    pub needs: Vec<String>,
}

/// Orders `nodes` so every module comes after all of its predecessors; ties
/// are broken by name so the output never depends on hash or input order.
pub fn sort(
    nodes: &BTreeSet<String>,
    hard: &[Edge],
    soft: &[Edge],
) -> Result<Vec<Ordered>, KmodError> {
    let mut preds: BTreeMap<&str, BTreeSet<&str>> = nodes
        .iter()
        .map(|n| (n.as_str(), BTreeSet::new()))
        .collect();
    for e in hard.iter().filter(|e| e.before != e.after) {
        add_edge(&mut preds, e);
    }
    let soft: BTreeSet<&Edge> = soft.iter().filter(|e| e.before != e.after).collect();
    for e in soft {
        if is_ancestor(&preds, &e.after, &e.before) {
            log::warn!(
                "ignoring soft dependency {} before {}: it would form a cycle",
                e.before,
                e.after
            );
            continue;
        }
        add_edge(&mut preds, e);
    }

    let order = kahn(&preds)?;
    let position: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // Predecessors come first in `order`, so their ancestor sets are final
    // by the time a module needs them.
    let mut ancestors: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut out = Vec::with_capacity(order.len());
    for &name in &order {
        let mut set = BTreeSet::new();
        for &p in &preds[name] {
            set.insert(p);
            set.extend(ancestors.get(p).into_iter().flatten().copied());
        }
        let mut needs: Vec<&str> = set.iter().copied().collect();
        needs.sort_by_key(|n| position[n]);
        out.push(Ordered {
            name: name.to_owned(),
            needs: needs.into_iter().map(str::to_owned).collect(),
        });
        ancestors.insert(name, set);
    }
    Ok(out)
}

fn add_edge<'a>(preds: &mut BTreeMap<&'a str, BTreeSet<&'a str>>, e: &'a Edge) {
    // Both ends are always nodes (the resolver only creates edges between
    // modules it included); an unknown one would be a resolver bug, and
    // adding it here keeps the sort total instead of panicking.
    preds.entry(e.before.as_str()).or_default();
    preds
        .entry(e.after.as_str())
        .or_default()
        .insert(e.before.as_str());
}

/// Whether `ancestor` is (transitively) required before `node`.
fn is_ancestor(preds: &BTreeMap<&str, BTreeSet<&str>>, ancestor: &str, node: &str) -> bool {
    let mut stack = vec![node];
    let mut seen = BTreeSet::new();
    while let Some(n) = stack.pop() {
        if n == ancestor {
            return true;
        }
        if seen.insert(n) {
            stack.extend(preds.get(n).into_iter().flatten().copied());
        }
    }
    false
}

/// Kahn's algorithm, always taking the alphabetically first ready module.
fn kahn<'a>(preds: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Result<Vec<&'a str>, KmodError> {
    let mut remaining: BTreeMap<&str, usize> = preds.iter().map(|(n, p)| (*n, p.len())).collect();
    let mut succs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (&n, ps) in preds {
        for &p in ps {
            succs.entry(p).or_default().push(n);
        }
    }
    let mut ready: BTreeSet<&str> = remaining
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::with_capacity(preds.len());
    while let Some(n) = ready.pop_first() {
        order.push(n);
        remaining.remove(n);
        for &s in succs.get(n).into_iter().flatten() {
            if let Some(count) = remaining.get_mut(s) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(s);
                }
            }
        }
    }
    if !remaining.is_empty() {
        return Err(KmodError::DependencyCycle {
            modules: remaining.keys().map(|s| (*s).to_owned()).collect(),
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(before: &str, after: &str) -> Edge {
        Edge {
            before: before.into(),
            after: after.into(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn names(o: &[Ordered]) -> Vec<&str> {
        o.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn deps_first_ties_by_name() {
        let nodes = set(&["c", "b", "a", "z"]);
        let out = sort(&nodes, &[e("z", "a")], &[]).unwrap();
        assert_eq!(names(&out), ["b", "c", "z", "a"]);
        assert_eq!(out[3].needs, ["z"]);
    }

    #[test]
    fn needs_are_transitive_and_in_load_order() {
        let nodes = set(&["a", "b", "c", "d"]);
        let out = sort(&nodes, &[e("b", "a"), e("c", "b")], &[e("d", "c")]).unwrap();
        assert_eq!(names(&out), ["d", "c", "b", "a"]);
        assert_eq!(out[3].needs, ["d", "c", "b"]);
    }

    #[test]
    fn soft_cycles_are_broken_hard_cycles_are_errors() {
        let nodes = set(&["a", "b"]);
        let out = sort(&nodes, &[e("a", "b")], &[e("b", "a")]).unwrap();
        assert_eq!(names(&out), ["a", "b"]);
        let err = sort(&nodes, &[e("a", "b"), e("b", "a")], &[]).unwrap_err();
        assert!(matches!(err, KmodError::DependencyCycle { .. }), "{err}");
    }
}
