//! Per-namespace budgets ([`crate::tenancy::Budget`]): the oldest objects of a namespace
//! fit, the newest past the budget are refused with `QuotaExceeded`. Other namespaces are
//! never affected by one namespace's flood.

use std::collections::BTreeMap;

use super::issues::Issues;
use super::kube_meta::Meta;
use crate::config::RouteConfig;
use crate::tenancy::Budgets;
use crate::Reason;

/// Counts bytes written, so that sizes are measured without building the JSON.
#[derive(Default)]
pub(crate) struct ByteCount(pub usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of `value`'s JSON.
pub(crate) fn json_size(value: &impl serde::Serialize) -> usize {
    let mut count = ByteCount::default();
    // Plain data cannot fail to serialize; a failure would only under-count.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Marks the routes past their namespace's budget. `used_bytes` is what the namespace's
/// consumers already take of its config bytes.
pub(crate) fn mark_route_budgets(
    routes: &mut [(Meta, Option<RouteConfig>, Issues)],
    order: &[(usize, &[String])],
    budgets: &Budgets,
    used_bytes: &BTreeMap<String, usize>,
) {
    if budgets.default == Default::default() && budgets.overrides.is_empty() {
        return;
    }
    let mut oldest_first: Vec<usize> = (0..routes.len()).collect();
    oldest_first.sort_by_key(|&i| {
        let meta = &routes[i].0;
        (meta.created.is_none(), meta.created, order[i].0)
    });
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut bytes: BTreeMap<String, usize> = BTreeMap::new();
    for i in oldest_first {
        let (meta, compiled, issues) = &mut routes[i];
        let Some(route) = compiled.as_ref().filter(|_| issues.is_accepted()) else {
            continue;
        };
        let budget = budgets.of(&meta.namespace);
        let n = count.entry(meta.namespace.clone()).or_insert(0);
        if budget.routes.is_some_and(|max| *n >= max) {
            issues.refused(
                Reason::QuotaExceeded,
                "metadata.namespace",
                format!(
                    "namespace {} already has its budget of {} routes; the newest routes past it are not served",
                    meta.namespace,
                    budget.routes.unwrap_or_default()
                ),
            );
            continue;
        }
        let size = json_size(route);
        let used = bytes
            .entry(meta.namespace.clone())
            .or_insert_with(|| used_bytes.get(&meta.namespace).copied().unwrap_or(0));
        if budget.config_bytes.is_some_and(|max| *used + size > max) {
            issues.refused(
                Reason::QuotaExceeded,
                "spec",
                format!(
                    "this route needs {size} bytes of config and namespace {} has {} of its {} bytes left",
                    meta.namespace,
                    budget.config_bytes.unwrap_or_default().saturating_sub(*used),
                    budget.config_bytes.unwrap_or_default()
                ),
            );
            continue;
        }
        *n += 1;
        *used += size;
    }
}
