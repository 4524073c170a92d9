//! AFL entry point of [`inference_server_fuzz::image`].

fn main() {
    afl::fuzz!(|data: &[u8]| inference_server_fuzz::image(data));
}
