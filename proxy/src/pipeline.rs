//! The request pipeline: the one function that fixes the order of the policy steps.
//!
//! Order (docs/architecture.md; steps not implemented yet are marked and simply absent):
//!  1. connection: global and per-IP connection limits (`connection_limits`), HTTP/1.1 +
//!     HTTP/2, header-read and idle timeouts (in `server`); TLS termination with per-host
//!     certificates and client authentication (`tls`), checked against the route in step 3.
//!  2. request id (`request_id`); W3C trace context (`trace_context`): continued or started,
//!     handed to the upstream with the proxy's span as parent.
//!     The request line and framing headers are checked and the path normalised
//!     (`request_target`): method case, target form, `Host`, `Transfer-Encoding`,
//!     underscore header names.
//!  3. route match (`router`) on the normalised path; for CORS preflights by the requested
//!     method. The route's `pathNormalization` decides encoded slashes and empty segments.
//!  4. client IP (`client_ip`) and IP allow/deny (`ip_filter`).
//!  5. pre-authentication rate limits: ClientIp, Global, Route, Header keys (`ratelimit`).
//!  6. WAF on request line, headers and cookies (`waf`).
//!     CORS preflight answered here (`cors`): after the IP filter, before authentication,
//!     because browsers never send credentials on a preflight.
//!  7. authentication (API key, JWT, OAuth2 introspection, forward auth) and authorization
//!     (groups, scopes, roles) (`auth`).
//!  8. per-consumer rate limits, tiers and quotas: Consumer, ApiKey keys (`ratelimit`).
//!  9. request validation (`validate`); WAF on the body (`waf`). The client's body runs
//!     under read timeouts, a minimum rate and the process-wide buffer budget
//!     (`client_body`).
//! 10. a redirect (`redirect`, Gateway API `RequestRedirect`), the route's direct response,
//!     or the upstream (`forward_headers`, `request_headers`, `upstream`: a Service target's
//!     ready endpoints, `upstream::endpoints`).
//! 11. response: upstream 5xx sanitizing, header add/remove, security headers, CORS,
//!     `X-Request-ID` (`response_headers`, `cors`); gateway errors as JSON (`errors`).
//! 12. audit line (`audit`) and metrics (`metrics`) for every request; a decision record
//!     (`decisions`) for every denial and a sample of the rest; spans of sampled traces
//!     (`otlp`), one per policy step that ran.
//!
//! Every step fails closed: an error returns a [`GatewayError`] and nothing is forwarded.
//! Steps are leaves: each takes its compiled policy and the fields of the request's
//! [`RequestContext`] it needs, returns its own error (made a `GatewayError`, and later a
//! response, in `errors`), and knows nothing of metrics, audit or decision records, which
//! [`handle`] writes once the request is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::audit::{timestamp, Audit, AuditRecord};
use crate::auth::{self, Identity};
use crate::body::{full, ProxyBody};
use crate::client_body::{BodyLimits, BufferBudget, ClientBody, ClientFault, FaultKind};
use crate::config_store::{CompiledRoute, ConfigStore, RuntimeConfig};
use crate::context::{RequestContext, StepSpan};
use crate::decisions::{Answered, DecisionLog, DecisionRecord, RateLimitEvidence};
use crate::errors::{json_error, GatewayError, UPSTREAM_ERROR_MESSAGE};
use crate::metrics::Metrics;
use crate::otlp::{SpanExporter, Value};
use crate::ratelimit;
use crate::router::{request_host, RequestView};
use crate::trace_context::{TraceContext, TraceOptions};
use crate::upstream::h1::Hop;
use crate::upstream::UpstreamError;
use crate::{
    client_ip, cors, forward_headers, ip_filter, request_id, request_target, response_headers,
    validate,
};

/// Process-wide state shared by every connection.
pub struct Shared {
    pub store: ConfigStore,
    /// Report counters by route id; outlive config swaps.
    pub counters: crate::counters::CounterRegistry,
    pub metrics: Metrics,
    pub audit: Audit,
    pub trusted_proxies: Vec<IpNet>,
    pub clients: crate::upstream::ClientPool,
    /// Rate-limit counters and Redis connections; outlive config swaps.
    pub rate_limit_backends: ratelimit::Backends,
    /// Port of the TLS listener, for HTTP→HTTPS redirects.
    pub https_port: Option<u16>,
    /// Keep header names with `_` (nginx's `underscores_in_headers on`).
    pub allow_underscores_in_headers: bool,
    pub body_limits: BodyLimits,
    /// Request bodies buffered for inspection, across the process.
    pub body_budget: Arc<BufferBudget>,
    /// Requests in flight, across the process (load shedding).
    pub in_flight: Arc<crate::overload::InFlightLimit>,
    /// Recent decisions for `GET /decisions` and `explain`.
    pub decisions: DecisionLog,
    pub trace: TraceOptions,
    /// This replica's id (audit lines, decision records, span resource).
    pub replica: Arc<str>,
    /// OTLP span export, when `--otlp-endpoint` is set.
    pub spans: Option<SpanExporter>,
}

pub async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    local_port: &HeaderValue,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let runtime = shared.store.load();
    let on_tls = request
        .extensions()
        .get::<Arc<crate::tls::ConnectionTls>>()
        .is_some();
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let origin = parts.headers.get(header::ORIGIN).cloned();
    // 2. request id and trace context
    let request_id = request_id::assign(&parts.headers);
    let trace = shared
        .trace
        .propagate
        .then(|| TraceContext::from_headers(&parts.headers, &shared.trace));
    let recording = shared.spans.is_some() && trace.as_ref().is_some_and(|t| t.sampled);
    let wall_start = recording.then(SystemTime::now);
    shared.metrics.in_flight.inc();
    let peer_ip = peer.ip().to_canonical();
    let mut ctx = RequestContext {
        request_id,
        peer_ip,
        client_ip: client_ip::resolve(peer_ip, &parts.headers, &shared.trusted_proxies),
        local_port,
        tls: on_tls,
        trace,
        route: None,
        identity: Identity::Unauthenticated,
        rate_limit: None,
        waf: Default::default(),
        path: None,
        upstream_latency_ms: None,
        steps: recording.then(Vec::new),
    };
    let result = run(shared, &runtime, parts, body, &mut ctx).await;
    let route = ctx.route.and_then(|i| runtime.routes.get(i));
    let route_id = route.map(|r| r.config.id.as_str());
    let keep_decision = shared.decisions.wants(result.is_err());
    let mut message = None;
    let mut limited_by = None;
    let (mut response, denial) = match result {
        Ok(response) => {
            if let Some(route) = route {
                route.counters.record(None);
            }
            (response, None)
        }
        Err(error) => {
            shared.metrics.refused(route_id, &error);
            if let GatewayError::RateLimit(e) = &error {
                limited_by = Some(RateLimitEvidence::of(e));
            }
            if keep_decision {
                message = Some(error.to_string());
            }
            if let Some(route) = route {
                route.counters.record(error.enforcement());
            }
            let denial = (error.step(), error.reason());
            let bearer = route
                .and_then(|r| r.auth.as_ref())
                .is_some_and(|a| a.uses_bearer());
            (error.into_response(&ctx.request_id, bearer), Some(denial))
        }
    };

    if let Some(route_id) = route_id {
        shared.metrics.waf_outcome(route_id, &ctx.waf);
    }

    // 11. response policy applies to upstream answers and gateway errors alike.
    if let Some(route) = route {
        route.response_headers.apply(response.headers_mut(), on_tls);
        if let Some(cors) = &route.cors {
            cors.apply_actual(origin.as_ref(), response.headers_mut());
        }
    }
    response_headers::set_request_id(response.headers_mut(), &ctx.request_id);
    ratelimit::headers::apply(ctx.rate_limit.as_ref(), response.headers_mut());

    // 12. metrics, decision record, spans and audit.
    let status = response.status();
    let elapsed = started.elapsed();
    let route_metrics = route.map_or(&shared.metrics.unmatched, |r| &r.metrics);
    shared
        .metrics
        .record(route_metrics, &method, status, elapsed);
    shared.metrics.in_flight.dec();
    let consumer = || match ctx.identity {
        Identity::Consumer(i) => runtime.keys.consumer(i).map(|c| c.id.as_str()),
        Identity::Anonymous => Some(auth::ANONYMOUS),
        Identity::Unauthenticated | Identity::Principal => None,
    };
    let trace_hex = (keep_decision || shared.audit.enabled())
        .then(|| ctx.trace.as_ref().map(TraceContext::trace_id_buf))
        .flatten();
    let trace_id = trace_hex.as_ref().and_then(|b| std::str::from_utf8(b).ok());
    let answered = Answered {
        request_id: ctx.request_id.to_str().unwrap_or(""),
        method: method.as_str(),
        path: ctx.path.as_deref().unwrap_or(uri.path()),
        status,
        route: route_id,
        denial,
    };
    if keep_decision {
        let mut record = DecisionRecord::new(
            &answered,
            trace_id.map(str::to_string),
            shared.replica.clone(),
            &runtime.generation,
        );
        record.consumer = consumer().map(str::to_string);
        record.message = message;
        record.rate_limit = limited_by.clone();
        record.waf = crate::decisions::waf_evidence(&ctx.waf);
        shared.decisions.push(record);
    }
    if let (Some(spans), Some(steps), Some(trace), Some(wall_start)) =
        (&shared.spans, ctx.steps.take(), &ctx.trace, wall_start)
    {
        spans.send(request_spans(trace, steps, wall_start, started, &answered));
    }
    if shared.audit.enabled() {
        shared.audit.write(&AuditRecord {
            timestamp: timestamp(),
            request_id: answered.request_id,
            trace_id,
            replica: &shared.replica,
            client_ip: ctx.client_ip,
            consumer: consumer(),
            route: route_id,
            method: method.as_str(),
            path: answered.path,
            status: status.as_u16(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_latency_ms: ctx.upstream_latency_ms,
            decision: if denial.is_some() { "deny" } else { "allow" },
            step: denial.map(|d| d.0),
            reason: denial.map(|d| d.1),
            policy: limited_by.as_ref().map(|l| l.policy.as_str()),
            limit: limited_by.as_ref().and_then(|l| l.limit.as_deref()),
            waf: ctx.waf.audit(),
            rule_ids: ctx.waf.rule_ids(),
        });
    }
    response
}

/// The request's server span and one child span per policy step that ran, on the wall
/// clock of the request's start plus monotonic offsets.
fn request_spans(
    trace: &TraceContext,
    steps: Vec<StepSpan>,
    wall_start: SystemTime,
    started: Instant,
    answered: &Answered<'_>,
) -> Vec<crate::otlp::Span> {
    let start_ns = crate::otlp::unix_nanos(wall_start);
    let at =
        |i: Instant| start_ns + u64::try_from(i.duration_since(started).as_nanos()).unwrap_or(0);
    let mut attributes = vec![
        ("http.request.method", Value::Str(answered.method.into())),
        (
            "url.path",
            Value::Str(crate::decisions::excerpt(answered.path, 160)),
        ),
        (
            "http.response.status_code",
            Value::Int(i64::from(answered.status.as_u16())),
        ),
        (
            "portcullis.request_id",
            Value::Str(answered.request_id.into()),
        ),
    ];
    if let Some(route) = answered.route {
        attributes.push(("http.route", Value::Str(route.into())));
    }
    if let Some((step, reason)) = answered.denial {
        attributes.push(("portcullis.denied_by", Value::Str(step.into())));
        attributes.push(("portcullis.reason", Value::Str(reason.into())));
    }
    let mut out = Vec::with_capacity(steps.len() + 1);
    out.push(crate::otlp::Span {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent_span_id: trace.parent_span_id,
        name: "request",
        server: true,
        start_unix_ns: start_ns,
        end_unix_ns: at(Instant::now()),
        attributes,
        error: answered.status.is_server_error(),
    });
    for StepSpan(name, from, to, failed) in steps {
        out.push(crate::otlp::Span {
            trace_id: trace.trace_id,
            span_id: crate::trace_context::random_span_id(),
            parent_span_id: Some(trace.span_id),
            name,
            server: false,
            start_unix_ns: at(from),
            end_unix_ns: at(to),
            attributes: Vec::new(),
            error: failed,
        });
    }
    out
}

/// Steps 2 to 11, in order: the first error stops the request.
async fn run(
    shared: &Shared,
    runtime: &Arc<RuntimeConfig>,
    mut parts: Parts,
    body: Incoming,
    ctx: &mut RequestContext<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    let client_ip = ctx.client_ip;
    // 2. the request line and framing; the path in normal form.
    let target = request_target::check(&mut parts, shared.allow_underscores_in_headers)?;
    let raw_path: Option<Box<str>> = match &target.changed {
        Some(normal) => {
            let raw = parts.uri.path().into();
            parts.uri = request_target::with_path(&parts.uri, normal);
            ctx.path = Some(normal.as_str().into());
            Some(raw)
        }
        None => None,
    };

    // 3. route match
    let host = request_host(&parts.uri, &parts.headers);
    let preflight_method = if cors::is_preflight(&parts.method, &parts.headers) {
        cors::requested_method(&parts.headers)
    } else {
        None
    };
    let view = |method: &'_ Method| -> Option<crate::router::RouteMatch> {
        runtime.router.find(&RequestView {
            host: &host,
            path: parts.uri.path(),
            query: parts.uri.query(),
            method,
            headers: &parts.headers,
        })
    };
    let preflight_match = preflight_method
        .as_ref()
        .and_then(&view)
        .filter(|m| runtime.routes[m.route].cors.is_some());
    let found = match preflight_match {
        Some(found) => Some(found),
        None => view(&parts.method),
    };
    let found = found.ok_or(GatewayError::NoRoute)?;
    drop(host);
    ctx.route = Some(found.route);
    let route: &CompiledRoute = &runtime.routes[found.route];
    let config = &route.config;
    let rewrites = config.strip_path || config.rewrite_prefix.is_some();
    if let Some(unmerged) = request_target::route_path(
        raw_path.as_deref().unwrap_or(parts.uri.path()),
        parts.uri.path(),
        &target,
        config.path_normalization,
        rewrites,
    )? {
        parts.uri = request_target::with_path(&parts.uri, &unmerged);
        ctx.path = Some(unmerged.into());
    }
    // 1. (after the match) the connection's TLS policy must be the route's; HTTP → HTTPS.
    if let Some(redirect) = crate::tls::check_route(config, &parts, shared.https_port)? {
        return Ok(redirect);
    }

    // 4. client IP filter
    if let Some(restriction) = &config.ip_restriction {
        let t = ctx.clock();
        ctx.step(
            "ip_restriction",
            t,
            ip_filter::check(restriction, client_ip),
        )?;
    }

    // 5. pre-authentication rate limits
    let limited = ratelimit::LimitedRequest {
        route: found.route,
        route_id: &config.id,
        client_ip,
        parts: &parts,
    };
    let t = ctx.clock();
    let pre_auth = ratelimit::pre_auth(
        &shared.rate_limit_backends,
        &runtime.rate_limits,
        &limited,
        &mut ctx.rate_limit,
    )
    .await;
    // Recorded only where a limit ran (a route's own or its namespace's global policies).
    let pre_auth = if ctx.rate_limit.is_none() && pre_auth.is_ok() {
        pre_auth?
    } else {
        ctx.step("rate_limit.pre_auth", t, pre_auth)?
    };

    // 6. WAF on the request line, headers and cookies
    if let Some(waf) = &route.waf {
        let t = ctx.clock();
        let checked = crate::waf::check_head(waf, &parts, client_ip, &mut ctx.waf);
        ctx.step("waf.head", t, checked)?;
    }

    // CORS preflight: answered by the gateway, before authentication.
    if preflight_match.is_some() {
        if let Some(cors) = &route.cors {
            return Ok(cors.preflight(&parts.headers)?);
        }
    }

    // 7. authentication and authorization
    let mut auth_context = auth::AuthContext::UNAUTHENTICATED;
    if let Some(auth) = &route.auth {
        // Boxed (here and for the body checks below): identity-provider calls make these
        // futures large, and routes that do not use them should not carry their size.
        let t = ctx.clock();
        let authenticated = Box::pin(auth.authenticate(&runtime.keys, &mut parts)).await;
        auth_context = ctx.step("authentication", t, authenticated)?;
        ctx.identity = auth_context.identity;
    }
    if let Some(authorization) = &config.authorization {
        let t = ctx.clock();
        let authorized = auth::authorize(authorization, &runtime.keys, &auth_context);
        ctx.step("authorization", t, authorized)?;
    }

    // 8. per-consumer rate limits and quotas
    let limited = ratelimit::LimitedRequest {
        route: found.route,
        route_id: &config.id,
        client_ip,
        parts: &parts,
    };
    let caller = ratelimit::Caller {
        identity: ctx.identity,
        consumer: match ctx.identity {
            Identity::Consumer(i) => runtime.keys.consumer(i),
            Identity::Principal | Identity::Anonymous | Identity::Unauthenticated => None,
        },
        credential: auth_context.credential,
        subject: auth_context
            .principal
            .as_ref()
            .and_then(|p| p.subject.as_ref())
            .and_then(|s| s.to_str().ok()),
    };
    let t = ctx.clock();
    let post_auth = ratelimit::post_auth(
        &shared.rate_limit_backends,
        &runtime.rate_limits,
        &limited,
        &caller,
        pre_auth,
        &mut ctx.rate_limit,
    )
    .await;
    if ctx.rate_limit.is_none() && post_auth.is_ok() {
        post_auth?
    } else {
        ctx.step("rate_limit.post_auth", t, post_auth)?
    };

    // 9. request validation
    let has_body = validate::has_body(&parts, &body);
    let fault = Arc::new(ClientFault::default());
    let body: ProxyBody = if has_body {
        ClientBody::new(body, shared.body_limits, fault.clone()).boxed()
    } else {
        body.map_err(Into::into).boxed()
    };
    let body = match &route.validation {
        Some(validation) => {
            let t = ctx.clock();
            let checked = match validation.check_head(&parts, has_body) {
                Ok(()) => {
                    Box::pin(validation.check_body(body, has_body, &fault, &shared.body_budget))
                        .await
                }
                Err(e) => Err(e),
            };
            ctx.step("validation", t, checked)?
        }
        None => body,
    };
    // 9. WAF on the body
    let body = match &route.waf {
        Some(waf) if has_body => {
            let t = ctx.clock();
            let checked = Box::pin(crate::waf::check_body(
                waf,
                &parts,
                client_ip,
                body,
                &fault,
                &shared.body_budget,
                &mut ctx.waf,
            ))
            .await;
            ctx.step("waf.body", t, checked)?
        }
        _ => body,
    };

    // 10. upstream: a redirect, the direct response, or forwarding
    if let Some(redirect) = &config.redirect {
        let tls = ctx.tls;
        if let Some(response) =
            crate::redirect::respond(redirect, &parts, found.matched_prefix, tls)
        {
            return Ok(response);
        }
    }
    if let Some(direct) = &route.upstream.direct {
        let mut response = Response::new(full(direct.body.clone()));
        *response.status_mut() = direct.status;
        if let Some(content_type) = &direct.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        return Ok(response);
    }
    let original_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    let added = forward_headers::prepare(
        &mut parts.headers,
        &forward_headers::ForwardContext {
            peer: ctx.peer_ip,
            peer_trusted: client_ip::is_trusted(ctx.peer_ip, &shared.trusted_proxies),
            client_ip,
            request_id: &ctx.request_id,
            original_host,
            identity: ctx.identity,
            keys: &runtime.keys,
            tls: ctx.tls,
            local_port: ctx.local_port,
        },
    );
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    auth_context.apply_upstream(&mut parts.headers);
    if let Some(modifier) = &route.request_headers {
        modifier.apply(&mut parts.headers);
    }
    let traceparent = ctx.trace.as_ref().map(|trace| {
        trace.apply_upstream(&mut parts.headers);
        trace.traceparent()
    });
    let rewritten = match &config.rewrite_path {
        Some(full) => forward_headers::replace_path(&parts.uri, full),
        None => forward_headers::rewrite_path(
            &parts.uri,
            found.matched_prefix,
            config.strip_path,
            config.rewrite_prefix.as_deref(),
        ),
    };
    let path_and_query = rewritten.or_else(|| parts.uri.path_and_query().cloned());
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.path_and_query = path_and_query;
    parts.uri = Uri::from_parts(uri_parts).unwrap_or_default();
    let replayable = !has_body && is_idempotent(&parts.method);

    let upstream_started = Instant::now();
    let result = route
        .upstream
        .forward(
            parts,
            Hop {
                added: &added,
                traceparent: traceparent.as_ref(),
            },
            body,
            client_ip,
            replayable,
            &fault,
        )
        .await;
    let upstream_elapsed = upstream_started.elapsed();
    ctx.upstream_latency_ms = Some(upstream_elapsed.as_secs_f64() * 1000.0);
    if result.is_ok() {
        shared
            .metrics
            .upstream_latency(&route.metrics, upstream_elapsed);
    }
    if let Some(steps) = &mut ctx.steps {
        steps.push(StepSpan(
            "upstream",
            upstream_started,
            Instant::now(),
            result.is_err(),
        ));
    }
    let response = match result {
        Ok(response) => response,
        Err(e) => return Err(client_fault(&fault).unwrap_or(e.into())),
    };
    if fault.get() == Some(FaultKind::TooLarge) {
        // The upstream answered before reading the whole body; the client still sent too much.
        return Err(UpstreamError::BodyTooLarge.into());
    }

    // 11. upstream response
    let (mut head, body) = response.into_parts();
    response_headers::strip_upstream_hop_by_hop(&mut head.headers);
    if config.sanitize_upstream_errors && head.status.is_server_error() {
        let mut sanitized = json_error(head.status, UPSTREAM_ERROR_MESSAGE, None, &ctx.request_id);
        for name in ["content-length", "content-type", "content-encoding"] {
            head.headers.remove(name);
        }
        let (sanitized_head, sanitized_body) = {
            let headers = std::mem::take(sanitized.headers_mut());
            (headers, sanitized.into_body())
        };
        head.headers.extend(sanitized_head);
        return Ok(Response::from_parts(head, sanitized_body));
    }
    Ok(Response::from_parts(head, body.map_err(Into::into).boxed()))
}

/// The error for a body that failed on the client's side, if it did.
fn client_fault(fault: &ClientFault) -> Option<GatewayError> {
    Some(match fault.get()? {
        FaultKind::TooLarge => UpstreamError::BodyTooLarge.into(),
        kind => GatewayError::ClientBody(kind),
    })
}

/// HTTP/2 may split `cookie` into several fields (RFC 9113 §8.2.3); an HTTP/1.1 upstream
/// expects one, and many frameworks read only the first.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// 404 for requests that cannot even be parsed into a route lookup.
pub fn not_found(request_id: &HeaderValue) -> Response<ProxyBody> {
    json_error(StatusCode::NOT_FOUND, "no route matched", None, request_id)
}
