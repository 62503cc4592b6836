//! Request bodies read in bounded steps. A body is inflated (gzip or deflate, per
//! `Content-Encoding`) chunk by chunk through a writer that refuses to grow past the limit, so a
//! small compressed body can never make the server hold more than the limit: reading stops with
//! [`PayloadError::Overflow`] as soon as the inflated size passes it. The raw (compressed) size
//! is bounded by the same limit, since a deflate stream can also be endless padding that inflates
//! to nothing.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_ENCODING, HeaderMap};
use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::error::{ApiError, ApiResult};

/// A `Content-Encoding` this server inflates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

impl Encoding {
    /// The encoding a request declares.
    ///
    /// # Errors
    /// 400 for an encoding other than gzip, deflate or identity (or more than one).
    pub fn from_headers(headers: &HeaderMap) -> ApiResult<Encoding> {
        let mut values = headers.get_all(CONTENT_ENCODING);
        let Some(value) = values.next() else {
            return Ok(Encoding::Identity);
        };
        let unsupported = || {
            ApiError::BadRequest(
                "Content-Encoding must be one of gzip, deflate or identity".to_owned(),
            )
        };
        if values.next().is_some() {
            return Err(unsupported());
        }
        let text = value.to_str().map_err(|_| unsupported())?.trim();
        if text.eq_ignore_ascii_case("gzip") || text.eq_ignore_ascii_case("x-gzip") {
            Ok(Encoding::Gzip)
        } else if text.eq_ignore_ascii_case("deflate") {
            Ok(Encoding::Deflate)
        } else if text.eq_ignore_ascii_case("identity") || text.is_empty() {
            Ok(Encoding::Identity)
        } else {
            Err(unsupported())
        }
    }
}

/// The error a [`Capped`] writer gives when the inflated body passes the limit.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inflated body over the limit")
    }
}

impl std::error::Error for OverLimit {}

/// Where the inflater writes: refuses any write that would take the total past `limit`.
struct Capped {
    out: BytesMut,
    total: usize,
    limit: usize,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.total + buf.len() > self.limit {
            return Err(std::io::Error::other(OverLimit));
        }
        self.total += buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inflater {
    Identity { total: usize },
    Gzip(flate2::write::GzDecoder<Capped>),
    Deflate(flate2::write::ZlibDecoder<Capped>),
}

fn inflate_error(error: &std::io::Error) -> PayloadError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<OverLimit>().is_some())
    {
        PayloadError::Overflow
    } else {
        PayloadError::EncodingCorrupted
    }
}

impl Inflater {
    fn new(encoding: Encoding, limit: usize) -> Inflater {
        let capped = Capped {
            out: BytesMut::new(),
            total: 0,
            limit,
        };
        match encoding {
            Encoding::Identity => Inflater::Identity { total: 0 },
            Encoding::Gzip => Inflater::Gzip(flate2::write::GzDecoder::new(capped)),
            Encoding::Deflate => Inflater::Deflate(flate2::write::ZlibDecoder::new(capped)),
        }
    }

    /// Inflates one raw chunk; `None` when it produced nothing yet (a header, say).
    fn feed(&mut self, chunk: Bytes, limit: usize) -> Result<Option<Bytes>, PayloadError> {
        let out = match self {
            Inflater::Identity { total } => {
                *total += chunk.len();
                if *total > limit {
                    return Err(PayloadError::Overflow);
                }
                return Ok(Some(chunk));
            }
            Inflater::Gzip(decoder) => {
                decoder.write_all(&chunk).map_err(|e| inflate_error(&e))?;
                &mut decoder.get_mut().out
            }
            Inflater::Deflate(decoder) => {
                decoder.write_all(&chunk).map_err(|e| inflate_error(&e))?;
                &mut decoder.get_mut().out
            }
        };
        Ok((!out.is_empty()).then(|| out.split().freeze()))
    }

    /// Ends the stream: the rest of the output, after checking the trailer (gzip's CRC and
    /// length) and that the compressed stream was complete.
    fn finish(&mut self) -> Result<Option<Bytes>, PayloadError> {
        let out = match self {
            Inflater::Identity { .. } => return Ok(None),
            Inflater::Gzip(decoder) => {
                decoder.try_finish().map_err(|e| inflate_error(&e))?;
                &mut decoder.get_mut().out
            }
            Inflater::Deflate(decoder) => {
                decoder.try_finish().map_err(|e| inflate_error(&e))?;
                &mut decoder.get_mut().out
            }
        };
        Ok((!out.is_empty()).then(|| out.split().freeze()))
    }
}

/// A request body stream, inflated and capped at `limit` bytes both before and after inflation.
pub struct BoundedBody<S> {
    raw: S,
    inflater: Inflater,
    raw_bytes: usize,
    limit: usize,
    done: bool,
}

impl<S> BoundedBody<S> {
    pub fn new(raw: S, encoding: Encoding, limit: usize) -> BoundedBody<S> {
        BoundedBody {
            raw,
            inflater: Inflater::new(encoding, limit),
            raw_bytes: 0,
            limit,
            done: false,
        }
    }
}

impl<S> Stream for BoundedBody<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.done {
            let next = match this.raw.poll_next_unpin(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            };
            let result = match next {
                Some(Ok(chunk)) => {
                    this.raw_bytes += chunk.len();
                    if this.raw_bytes > this.limit {
                        Err(PayloadError::Overflow)
                    } else {
                        this.inflater.feed(chunk, this.limit)
                    }
                }
                Some(Err(error)) => Err(error),
                None => {
                    this.done = true;
                    this.inflater.finish()
                }
            };
            match result {
                Ok(Some(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Ok(None) => {}
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
        Poll::Ready(None)
    }
}

/// The 413 every over-limit body gets.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("request body is over {limit} bytes"))
}

/// Collects a bounded body.
///
/// # Errors
/// 413 over the limit, 400 for a broken stream or a body that does not inflate.
pub async fn collect<S>(mut body: BoundedBody<S>) -> ApiResult<BytesMut>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match e {
            PayloadError::Overflow => too_large(body.limit),
            PayloadError::EncodingCorrupted => ApiError::BadRequest(
                "request body does not match its Content-Encoding (corrupt or truncated)".into(),
            ),
            other => ApiError::BadRequest(format!("unreadable request body: {other}")),
        })?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    async fn read(chunks: Vec<Vec<u8>>, encoding: Encoding, limit: usize) -> ApiResult<Vec<u8>> {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from(c))),
        );
        let body = BoundedBody::new(stream, encoding, limit);
        collect(body).await.map(|b| b.to_vec())
    }

    #[actix_rt::test]
    async fn gzip_split_anywhere_inflates_to_the_original() {
        let original: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let compressed = gzip(&original);
        for split in [1, 7, 10, 11, 4096] {
            let chunks: Vec<Vec<u8>> = compressed.chunks(split).map(<[u8]>::to_vec).collect();
            assert_eq!(
                read(chunks, Encoding::Gzip, 1 << 20).await.unwrap(),
                original,
                "{split}"
            );
        }
    }

    #[actix_rt::test]
    async fn inflating_past_the_limit_stops_with_413() {
        let compressed = gzip(&vec![0u8; 10 << 20]);
        let err = read(vec![compressed], Encoding::Gzip, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)), "{err:?}");
        // Exactly the limit is fine.
        let at_limit = gzip(&vec![1u8; 1000]);
        assert_eq!(
            read(vec![at_limit], Encoding::Gzip, 1000)
                .await
                .unwrap()
                .len(),
            1000
        );
    }

    #[actix_rt::test]
    async fn raw_bytes_past_the_limit_stop_with_413_whatever_they_inflate_to() {
        let err = read(
            vec![vec![b' '; 600], vec![b' '; 600]],
            Encoding::Identity,
            1000,
        )
        .await;
        assert!(matches!(err, Err(ApiError::PayloadTooLarge(_))));
    }

    #[actix_rt::test]
    async fn corrupt_or_truncated_gzip_is_400() {
        let compressed = gzip(b"[1,2,3]");
        let truncated = compressed[..compressed.len() - 4].to_vec();
        for bad in [b"not gzip at all".to_vec(), truncated] {
            let err = read(vec![bad], Encoding::Gzip, 1 << 20).await.unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
        }
    }

    #[test]
    fn only_known_encodings_are_accepted() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            Encoding::from_headers(&headers).unwrap(),
            Encoding::Identity
        );
        for (value, expected) in [
            ("gzip", Some(Encoding::Gzip)),
            ("GZIP", Some(Encoding::Gzip)),
            ("deflate", Some(Encoding::Deflate)),
            ("identity", Some(Encoding::Identity)),
            ("br", None),
            ("gzip, br", None),
        ] {
            headers.insert(CONTENT_ENCODING, value.parse().unwrap());
            assert_eq!(Encoding::from_headers(&headers).ok(), expected, "{value}");
        }
    }
}
