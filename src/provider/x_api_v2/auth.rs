//! Where each X API v2 request's bearer token comes from, and the one place a request goes out with it:
//! a fixed access token (`api_key_env` / `api_key_file`), or a [`TokenSource`] whose token renews itself
//! (SPEC 8.1). With a source, a 401 renews the token once (or takes the one a concurrent request already
//! renewed) and the request is sent once more; a second 401 is an account-level error naming `auth`.

use reqwest::header::{HeaderValue, AUTHORIZATION};

use super::limits::Bucket;
use super::XApiV2;
use crate::provider::oauth::TokenSource;
use crate::provider::util::Request;
use crate::provider::ProviderError;

/// A client's bearer tokens.
pub(super) enum Auth {
    /// The configured access token's header (marked sensitive); None only if it could not be built, which
    /// `XApiV2::new` already refused.
    Static(Option<HeaderValue>),
    /// Boxed: the source is larger than every other field of the client together.
    OAuth(Box<TokenSource>),
}

impl XApiV2 {
    /// Sends the request `build` makes (again, if a 401 asks for a renewed token) with the bearer token,
    /// within the rate-limit window of `bucket`; returns the body of a 2xx or the classified error.
    pub(super) async fn call(
        &self,
        bucket: Bucket,
        endpoint: &'static str,
        build: impl Fn() -> Request,
    ) -> Result<bytes::Bytes, ProviderError> {
        let source = match &self.auth {
            Auth::Static(header) => {
                let req = match header {
                    Some(h) => build().secret_header(AUTHORIZATION, h.clone()),
                    None => build(),
                };
                return self.limits.exchange(bucket, endpoint, req).await;
            }
            Auth::OAuth(source) => source,
        };
        let bearer = source.bearer().await?;
        match self.limits.exchange(bucket, endpoint, build().secret_header(AUTHORIZATION, bearer.header.clone())).await
        {
            Err(e) if e.status == Some(401) => {
                let renewed = source.unauthorized(&bearer).await?;
                match self.limits.exchange(bucket, endpoint, build().secret_header(AUTHORIZATION, renewed.header)).await
                {
                    Err(e) if e.status == Some(401) => Err(source.still_unauthorized(e)),
                    other => other,
                }
            }
            other => other,
        }
    }
}
