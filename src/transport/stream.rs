//! TCP frame streams: a 4-byte big-endian length, then the frame; longer than
//! [`MAX_FRAME`](crate::wire::MAX_FRAME) is an error that ends the connection.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::wire::MAX_FRAME;

pub type FramedStream = Framed<TcpStream, LengthDelimitedCodec>;

pub fn framed(stream: TcpStream) -> FramedStream {
    let _ = stream.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec();
    Framed::new(stream, codec)
}

pub async fn connect(addr: SocketAddr) -> io::Result<FramedStream> {
    Ok(framed(TcpStream::connect(addr).await?))
}

pub async fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
