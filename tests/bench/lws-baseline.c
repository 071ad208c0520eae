/*
 * The libwebsockets baseline for tests/bench/run.sh: the server wasmgate is
 * measured against, doing what the benchmark's wasmgate device does.
 *
 *   HTTP      any GET -> 200 text/plain "hello world\n", keep-alive
 *             (the `hello` guest)
 *   WebSocket an upgrade naming no subprotocol, or "echo", echoes every
 *             message in the pieces it came in (the `ws-echo` guest): each
 *             piece is queued and written back on WRITEABLE; past 8 queued
 *             pieces receiving pauses (lws_rx_flow_control) until fewer
 *             than 4 are left
 *   TLS       with a certificate and key (PEM files), on the same port
 *
 * usage:  lws-baseline PORT [CERT.pem KEY.pem]     binds 127.0.0.1 only
 * build:  cc -O2 -o lws-baseline lws-baseline.c $(pkg-config --cflags --libs libwebsockets)
 * Prints "lws-baseline: listening on 127.0.0.1:PORT" once it accepts.
 */
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char hello[] = "hello world\n";
#define HELLO_LEN (sizeof(hello) - 1)

/* Queue past which receiving pauses, and the level at which it resumes. */
#define PAUSE_AT 8
#define RESUME_BELOW 4

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

/* One received piece waiting to go back; LWS_PRE bytes of room come first. */
struct piece {
	struct piece *next;
	size_t len;
	enum lws_write_protocol mode;
	unsigned char data[];
};

/* Per WebSocket connection. */
struct echo_session {
	struct piece *first, *last;
	int waiting;
	int paused;
};

static int http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			 size_t len)
{
	unsigned char buf[LWS_PRE + 384];
	unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof(buf) - 1;

	if (reason == LWS_CALLBACK_HTTP) {
		if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/plain", HELLO_LEN, &p, end))
			return 1;
		if (lws_finalize_write_http_header(wsi, start, &p, end))
			return 1;
		lws_callback_on_writable(wsi);
		return 0;
	}
	if (reason == LWS_CALLBACK_HTTP_WRITEABLE) {
		memcpy(start, hello, HELLO_LEN);
		if (lws_write(wsi, start, HELLO_LEN, LWS_WRITE_HTTP_FINAL) != (int)HELLO_LEN)
			return 1;
		/* Keep-alive: non-zero means the connection must close. */
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void drop_queue(struct echo_session *s)
{
	while (s->first) {
		struct piece *next = s->first->next;
		free(s->first);
		s->first = next;
	}
	s->last = NULL;
	s->waiting = 0;
}

static int echo_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			 size_t len)
{
	struct echo_session *s = user;
	struct piece *piece;

	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		memset(s, 0, sizeof(*s));
		return 0;
	case LWS_CALLBACK_RECEIVE:
		piece = malloc(sizeof(*piece) + LWS_PRE + len);
		if (!piece)
			return -1;
		piece->next = NULL;
		piece->len = len;
		piece->mode = lws_write_ws_flags(lws_frame_is_binary(wsi) ? LWS_WRITE_BINARY
									   : LWS_WRITE_TEXT,
						 lws_is_first_fragment(wsi),
						 lws_is_final_fragment(wsi));
		memcpy(piece->data + LWS_PRE, in, len);
		if (s->last)
			s->last->next = piece;
		else
			s->first = piece;
		s->last = piece;
		if (++s->waiting > PAUSE_AT && !s->paused) {
			lws_rx_flow_control(wsi, 0);
			s->paused = 1;
		}
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		piece = s->first;
		if (!piece)
			return 0;
		if (lws_write(wsi, piece->data + LWS_PRE, piece->len, piece->mode) < (int)piece->len)
			return -1;
		s->first = piece->next;
		if (!s->first)
			s->last = NULL;
		free(piece);
		if (--s->waiting < RESUME_BELOW && s->paused) {
			lws_rx_flow_control(wsi, 1);
			s->paused = 0;
		}
		if (s->first)
			lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_CLOSED:
		drop_queue(s);
		return 0;
	default:
		return 0;
	}
}

static const struct lws_protocols protocols[] = {
	{ .name = "http", .callback = http_callback },
	{ .name = "echo", .callback = echo_callback,
	  .per_session_data_size = sizeof(struct echo_session), .rx_buffer_size = 65536 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 } /* end of the list */
};

/* Upgrades that name no subprotocol get "echo". */
static const struct lws_protocol_vhost_options echo_is_default = { NULL, NULL, "default", "" };
static const struct lws_protocol_vhost_options echo_options = { NULL, &echo_is_default, "echo", "" };

int main(int argc, char **argv)
{
	struct lws_context_creation_info info;
	struct lws_context *context;

	if (argc != 2 && argc != 4) {
		fprintf(stderr, "usage: %s PORT [CERT.pem KEY.pem]\n", argv[0]);
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	lws_set_log_level(LLL_ERR | LLL_WARN, NULL);

	memset(&info, 0, sizeof(info));
	info.port = atoi(argv[1]);
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	info.pvo = &echo_options;
	info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_VALIDATE_UTF8;
	if (argc == 4) {
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.ssl_cert_filepath = argv[2];
		info.ssl_private_key_filepath = argv[3];
	}
	context = lws_create_context(&info);
	if (!context) {
		fprintf(stderr, "lws-baseline: libwebsockets did not start\n");
		return 1;
	}
	printf("lws-baseline: libwebsockets %s listening on 127.0.0.1:%d%s\n",
	       lws_get_library_version(), info.port, argc == 4 ? " (TLS)" : "");
	fflush(stdout);
	while (!stopping && lws_service(context, 0) >= 0)
		;
	lws_context_destroy(context);
	return 0;
}
