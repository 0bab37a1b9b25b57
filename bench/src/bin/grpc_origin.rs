//! A minimal gRPC origin for the benchmark's unary gRPC scenario: an h2c
//! server (hyper) that reads each call's request and answers it with one
//! small message and `grpc-status: 0` in the trailers, the shape of a
//! unary gRPC answer. The proxies under test carry it; its own cost is on
//! the load core and is not measured.
//!
//! `grpc_origin --listen 127.0.0.1:19111`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    /// Address to serve h2c on.
    #[arg(long)]
    listen: SocketAddr,
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

async fn answer(req: Request<Incoming>) -> Result<Response<StreamBody<Frames>>, Infallible> {
    // Read the call whole, as a unary server does.
    let _ = req.into_body().collect().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
        Ok(Frame::trailers(trailers)),
    ];
    let resp = Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("a fixed response is well-formed");
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1024)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}
