/*
 * cm_frame: reference encoder of the condition-monitor wire protocol (firmware_bridge/PROTOCOL.md).
 *
 * Portable C99 for microcontrollers: no malloc, no stdio, only stdint.h / stddef.h / string.h.
 * A frame is built straight into a caller-provided buffer, COBS-encoded, with the trailing 0x00
 * delimiter: hand the returned length to the UART / USB CDC write function as is.
 */
#ifndef CM_FRAME_H
#define CM_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CM_FRAME_VERSION 1u
#define CM_FRAME_TYPE_SAMPLES 1u
#define CM_FRAME_TYPE_STATUS 2u
#define CM_FRAME_HEADER_SIZE 36u
#define CM_FRAME_CRC_SIZE 4u
#define CM_FRAME_MAX_PAYLOAD 16384u
#define CM_FRAME_MAX_CHANNELS 32u
/* flags bit 0: capture_time_us counts from the sender's boot (no wall clock); the receiver anchors it. */
#define CM_FRAME_FLAG_BOOT_TIME 0x01u

/* Raw (un-stuffed) frame size for a payload of `payload` bytes. */
#define CM_FRAME_RAW_SIZE(payload) (CM_FRAME_HEADER_SIZE + (payload) + CM_FRAME_CRC_SIZE)
/* Worst-case bytes on the wire: COBS adds 1 byte per started 254-byte run, plus the 0x00 delimiter. */
#define CM_FRAME_WIRE_MAX(payload) (CM_FRAME_RAW_SIZE(payload) + CM_FRAME_RAW_SIZE(payload) / 254u + 2u)
/* Buffer size that always holds a samples frame of `count` samples x `channels` channels. */
#define CM_FRAME_SAMPLES_WIRE_MAX(count, channels) CM_FRAME_WIRE_MAX((size_t)(count) * (channels) * 2u)

/* Header fields of a samples frame (version, type, channels and sample count are set by the encoder). */
typedef struct {
    uint32_t sequence;        /* +1 per frame (samples and status share it), wraps at 2^32 */
    uint64_t first_sample;    /* index of the frame's first sample since the sensor started */
    int64_t capture_time_us;  /* microseconds since the Unix epoch (UTC) of the first sample, or since
                                 boot with CM_FRAME_FLAG_BOOT_TIME in flags */
    uint32_t sample_rate_hz;
    float scale;              /* physical units (g) per LSB */
    uint8_t flags;            /* CM_FRAME_FLAG_BOOT_TIME or 0; other bits must be 0 */
} cm_frame_info;

/* CRC-32 as zlib.crc32: start with crc = 0, chain calls over consecutive pieces. */
uint32_t cm_crc32_update(uint32_t crc, const uint8_t *data, size_t length);

/* COBS-encode `length` bytes (no delimiter appended). Returns the encoded length, 0 if `capacity`
 * is smaller than length + length / 254 + 1. */
size_t cm_cobs_encode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity);

/* Build a samples frame into `out`. `samples` holds sample_count * channels values interleaved
 * s0c0 s0c1 .. s0cN s1c0 ... Returns the wire length (delimiter included), or 0 when channels is not
 * 1..32, the payload exceeds 16384 bytes or `capacity` < CM_FRAME_SAMPLES_WIRE_MAX(count, channels). */
size_t cm_frame_encode_samples(uint8_t *out, size_t capacity, const cm_frame_info *info,
                               const int16_t *samples, uint16_t sample_count, uint8_t channels);

/* Build a status frame carrying `length` bytes of UTF-8 text; `flags` as in cm_frame_info. Same return
 * convention. */
size_t cm_frame_encode_status(uint8_t *out, size_t capacity, uint32_t sequence, int64_t capture_time_us,
                              uint8_t flags, const char *message, size_t length);

#ifdef __cplusplus
}
#endif

#endif /* CM_FRAME_H */
