//! AFL entry point of [`inference_server_fuzz::json_sample`].

fn main() {
    afl::fuzz!(|data: &[u8]| inference_server_fuzz::json_sample(data));
}
