/* cm_frame: reference encoder of the condition-monitor wire protocol. See cm_frame.h. */
#include "cm_frame.h"

#include <string.h>

/* The wire carries IEEE 754 binary32; refuse to build where float is something else. */
typedef char cm_float_is_32_bits[(sizeof(float) == 4u) ? 1 : -1];

/* Nibble table of the reflected CRC-32 polynomial 0xEDB88320: 64 bytes of flash instead of 1 KiB,
 * fast enough for 160 KB/s on a Cortex-M0. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

static uint32_t crc_byte(uint32_t c, uint8_t byte)
{
    c = (c >> 4) ^ crc_nibble[(c ^ byte) & 0x0Fu];
    c = (c >> 4) ^ crc_nibble[(c ^ (uint32_t)(byte >> 4)) & 0x0Fu];
    return c;
}

uint32_t cm_crc32_update(uint32_t crc, const uint8_t *data, size_t length)
{
    uint32_t c = crc ^ 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < length; i++) {
        c = crc_byte(c, data[i]);
    }
    return c ^ 0xFFFFFFFFu;
}

/* Streaming COBS writer: bytes are stuffed as they are produced, so a frame needs no second buffer.
 * Matches the Python `cobs` package byte for byte (no empty block after a final 254-byte run). */
typedef struct {
    uint8_t *out;
    size_t length;
    size_t code_at;
    uint8_t code;
    uint8_t ends_with_zero;
    uint32_t crc; /* running CRC register (pre-inverted) over the raw bytes */
} cobs_writer;

static void writer_start(cobs_writer *w, uint8_t *out)
{
    w->out = out;
    w->code_at = 0;
    w->length = 1;
    w->code = 1;
    w->ends_with_zero = 1;
    w->crc = 0xFFFFFFFFu;
}

static void writer_put(cobs_writer *w, uint8_t byte)
{
    if (byte == 0u) {
        w->out[w->code_at] = w->code;
        w->code_at = w->length++;
        w->code = 1;
        w->ends_with_zero = 1;
        return;
    }
    w->out[w->length++] = byte;
    if (++w->code == 0xFFu) {
        w->out[w->code_at] = w->code;
        w->code_at = w->length++;
        w->code = 1;
        w->ends_with_zero = 0;
    }
}

static void writer_put_checked(cobs_writer *w, uint8_t byte)
{
    w->crc = crc_byte(w->crc, byte);
    writer_put(w, byte);
}

static void writer_put_le(cobs_writer *w, uint64_t value, unsigned size)
{
    unsigned i;
    for (i = 0; i < size; i++) {
        writer_put_checked(w, (uint8_t)(value >> (8u * i)));
    }
}

/* Closes the last block; returns the stuffed length (without delimiter). */
static size_t writer_finish(cobs_writer *w)
{
    if (w->code != 1u || w->ends_with_zero) {
        w->out[w->code_at] = w->code;
        return w->length;
    }
    return w->length - 1u; /* drop the slot reserved after a final 254-byte run */
}

size_t cm_cobs_encode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity)
{
    cobs_writer w;
    size_t i;
    if (capacity < length + length / 254u + 1u) {
        return 0;
    }
    writer_start(&w, out);
    for (i = 0; i < length; i++) {
        writer_put(&w, data[i]);
    }
    return writer_finish(&w);
}

static void put_header(cobs_writer *w, uint8_t type, uint8_t channels, uint8_t flags, uint32_t sequence,
                       uint64_t first_sample, int64_t capture_time_us, uint32_t sample_rate_hz, float scale,
                       uint16_t count)
{
    uint32_t scale_bits;
    memcpy(&scale_bits, &scale, sizeof scale_bits);
    writer_put_le(w, CM_FRAME_VERSION, 1);
    writer_put_le(w, type, 1);
    writer_put_le(w, channels, 1);
    writer_put_le(w, flags, 1);
    writer_put_le(w, sequence, 4);
    writer_put_le(w, first_sample, 8);
    writer_put_le(w, (uint64_t)capture_time_us, 8); /* two's complement, as the wire's i64 */
    writer_put_le(w, sample_rate_hz, 4);
    writer_put_le(w, scale_bits, 4);
    writer_put_le(w, count, 2);
    writer_put_le(w, 0u, 2); /* reserved */
}

static size_t finish_frame(cobs_writer *w)
{
    uint32_t crc = w->crc ^ 0xFFFFFFFFu;
    size_t length;
    unsigned i;
    for (i = 0; i < 4u; i++) {
        writer_put(w, (uint8_t)(crc >> (8u * i)));
    }
    length = writer_finish(w);
    w->out[length] = 0u;
    return length + 1u;
}

size_t cm_frame_encode_samples(uint8_t *out, size_t capacity, const cm_frame_info *info,
                               const int16_t *samples, uint16_t sample_count, uint8_t channels)
{
    cobs_writer w;
    size_t payload = (size_t)sample_count * channels * 2u;
    size_t i;
    if (channels < 1u || channels > CM_FRAME_MAX_CHANNELS || payload > CM_FRAME_MAX_PAYLOAD ||
        capacity < CM_FRAME_WIRE_MAX(payload)) {
        return 0;
    }
    writer_start(&w, out);
    put_header(&w, CM_FRAME_TYPE_SAMPLES, channels, info->flags, info->sequence, info->first_sample,
               info->capture_time_us, info->sample_rate_hz, info->scale, sample_count);
    for (i = 0; i < (size_t)sample_count * channels; i++) {
        writer_put_le(&w, (uint16_t)samples[i], 2);
    }
    return finish_frame(&w);
}

size_t cm_frame_encode_status(uint8_t *out, size_t capacity, uint32_t sequence, int64_t capture_time_us,
                              uint8_t flags, const char *message, size_t length)
{
    cobs_writer w;
    size_t i;
    if (length > CM_FRAME_MAX_PAYLOAD || capacity < CM_FRAME_WIRE_MAX(length)) {
        return 0;
    }
    writer_start(&w, out);
    put_header(&w, CM_FRAME_TYPE_STATUS, 0u, flags, sequence, 0u, capture_time_us, 0u, 0.0f, (uint16_t)length);
    for (i = 0; i < length; i++) {
        writer_put_checked(&w, (uint8_t)message[i]);
    }
    return finish_frame(&w);
}
