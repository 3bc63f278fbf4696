"""AES for the relay and the handshake: the CTR backends (OpenSSL's CTR, its GCM keystream, the native library),
chosen once at start-up (`backend.load`) and handed down; importing any module here does nothing."""
