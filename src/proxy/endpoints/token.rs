//! `POST /auth/o2/token`: the drop-in LWA endpoint. A tool's SDK exchanges its drop-in
//! credentials (LWA's refresh_token grant) for a gateway token; see [`crate::auth::drop_in`].

use http::{header, HeaderValue, Request, Response};
use http_body::Body as HttpBody;

use crate::auth::drop_in;
use crate::net::body::{self, Body, BoxError};
use crate::proxy::rescue::ProxyError;
use crate::proxy::{unix_now, Gateway};

impl Gateway {
    /// The drop-in token endpoint: LWA's refresh_token grant, answered with a gateway token.
    pub(in crate::proxy) async fn drop_in_token<B>(
        &self,
        req: Request<B>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if req.method() != http::Method::POST {
            return Err(ProxyError::NotFound);
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = crate::server::peers::read_body(
            req.into_body(),
            drop_in::MAX_TOKEN_REQUEST_BYTES,
            self.limits.body_read_timeout,
        )
        .await?;
        let token =
            drop_in::issue(&*self.store, content_type.as_deref(), &body, unix_now()).await?;
        let json = serde_json::to_vec(&token)
            .map_err(|_| drop_in::TokenError::InvalidRequest("unserializable"))?;
        let mut resp = Response::new(body::full(json));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}
