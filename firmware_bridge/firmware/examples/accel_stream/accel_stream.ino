// accel_stream: stream a 4-channel accelerometer as cm_frame wire frames (firmware_bridge/PROTOCOL.md).
//
// Copy cm_frame.h and cm_frame.c next to this sketch (or install them as an Arduino library), pick a
// board with native USB (RP2040, ESP32-S3, SAMD51, Teensy): 4 channels at 20 kHz need ~164 KB/s,
// more than a 921,600-baud UART carries. On the Pi: cm-edge with [serial] port = "/dev/ttyACM0".
//
// Timing: this sketch polls micros() so it runs on any core. For production, sample from a timer
// interrupt or ADC DMA into the same double buffer; the framing code below does not change.
#include <Arduino.h>

#include "cm_frame.h"

static const uint8_t CHANNELS = 4;
static const uint32_t SAMPLE_RATE_HZ = 20000;
static const uint16_t FRAME_SAMPLES = 256;  // 12.8 ms per frame, 2.4 % framing overhead
static const uint32_t SAMPLE_PERIOD_US = 1000000UL / SAMPLE_RATE_HZ;

// ---- SENSOR STUB: replace readAccel() with your sensor ------------------------------------------
// As shipped it reads four analog inputs (e.g. ADXL335-class analog accelerometers, 300 mV/g at
// 3.3 V on a 10-bit ADC: 3.3 V / 1024 / 0.3 V/g = 0.0107 g per LSB, centred at mid-scale).
// For an I2C/SPI IMU (e.g. ADXL345 at +-16 g full resolution: 0.0039 g/LSB), read its FIFO here and set
// SCALE_G_PER_LSB to the datasheet sensitivity.
static const float SCALE_G_PER_LSB = 3.3f / 1024.0f / 0.3f;
static const uint8_t PINS[CHANNELS] = {A0, A1, A2, A3};

static void readAccel(int16_t *out) {
  for (uint8_t c = 0; c < CHANNELS; c++) {
    out[c] = (int16_t)(analogRead(PINS[c]) - 512);
  }
}
// ---- end of sensor stub ----------------------------------------------------------------------------

static int16_t samples[2][FRAME_SAMPLES * CHANNELS];  // double buffer: fill one while sending the other
static uint8_t wire[CM_FRAME_SAMPLES_WIRE_MAX(FRAME_SAMPLES, CHANNELS)];
static uint8_t filling = 0;
static uint16_t filled = 0;
static uint32_t sequence = 0;
static uint64_t sampleIndex = 0;       // samples since boot, including ones we failed to take
static uint64_t frameFirstSample = 0;
static int64_t frameTimeUs = 0;
static uint32_t nextSampleUs = 0;
static uint32_t lastMicros = 0;
static uint64_t microsHigh = 0;        // extends micros() past its 71-minute wrap

static int64_t micros64() {
  uint32_t now = micros();
  if (now < lastMicros) microsHigh += 1ULL << 32;
  lastMicros = now;
  return (int64_t)(microsHigh + now);
}

static void sendStatus(const char *message) {
  size_t n = cm_frame_encode_status(wire, sizeof wire, sequence++, micros64(), CM_FRAME_FLAG_BOOT_TIME, message,
                                    strlen(message));
  Serial.write(wire, n);
}

static void sendFrame(const int16_t *frameSamples) {
  cm_frame_info info;
  info.sequence = sequence++;
  info.first_sample = frameFirstSample;
  info.capture_time_us = frameTimeUs;  // boot-relative: no RTC here, so say so with the flag
  info.flags = CM_FRAME_FLAG_BOOT_TIME;  // the edge agent anchors it to its own clock (PROTOCOL.md section 4)
  info.sample_rate_hz = SAMPLE_RATE_HZ;
  info.scale = SCALE_G_PER_LSB;
  size_t n = cm_frame_encode_samples(wire, sizeof wire, &info, frameSamples, FRAME_SAMPLES, CHANNELS);
  Serial.write(wire, n);
}

void setup() {
  Serial.begin(2000000);  // ignored by USB CDC; a UART needs >= 2 Mbaud for 4 x 20 kHz
  while (!Serial) {
  }
  const uint8_t delimiter = 0;
  Serial.write(&delimiter, 1);  // ends any frame cut short by the reset (PROTOCOL.md section 2)
  sendStatus("accel_stream: boot; capture_time_us is microseconds since boot");
  nextSampleUs = micros();
}

void loop() {
  if ((int32_t)(micros() - nextSampleUs) < 0) return;
  if (filled == 0) {
    frameFirstSample = sampleIndex;
    frameTimeUs = micros64();
  }
  readAccel(&samples[filling][filled * CHANNELS]);
  filled++;
  sampleIndex++;
  nextSampleUs += SAMPLE_PERIOD_US;
  if (filled == FRAME_SAMPLES) {
    const int16_t *full = samples[filling];
    filling ^= 1;
    filled = 0;
    sendFrame(full);
    // Fell behind (blocked write, slow sensor)? Skip the missed slots and let first_sample show the
    // hole: the receiver discards the snapshot instead of scoring samples that are not contiguous.
    uint32_t late = (uint32_t)(micros() - nextSampleUs) / SAMPLE_PERIOD_US;
    if ((int32_t)(micros() - nextSampleUs) > 0 && late > 0) {
      sampleIndex += late;
      nextSampleUs += late * SAMPLE_PERIOD_US;
    }
  }
}
