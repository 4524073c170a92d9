//! AFL entry point of [`inference_server_fuzz::v2_binary`].

fn main() {
    afl::fuzz!(|data: &[u8]| inference_server_fuzz::v2_binary(data));
}
