// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Socket-level service translation for Switchyard's eBPF proxy mode.
//
// cgroup/connect{4,6} and cgroup/sendmsg{4,6} rewrite a ClusterIP destination to one backend at
// connect()/sendmsg() time; cgroup/recvmsg{4,6} and cgroup/getpeername{4,6} show the
// application the ClusterIP it dialled. No per-packet NAT and no conntrack for service traffic.
// Every program fails open: whatever it cannot resolve goes out untouched.
//
// Map ABI (mirrored by ebpf/src/lib.rs, which the loader uses):
// - addresses are 16 bytes in network byte order; an IPv4 address is stored IPv4-mapped
//   (::ffff:a.b.c.d), so one set of maps serves both families and an IPv6 socket dialling a
//   mapped ClusterIP is translated too;
// - ports are in network byte order, as the kernel hands them to sock_addr programs;
// - slot, count, flags, backend ids and timeouts are in host byte order.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SY_AF_INET 2
#define SY_AF_INET6 10
#define SY_IPPROTO_TCP 6
#define SY_IPPROTO_UDP 17
#define SY_ECONNREFUSED 111

// sy_services flags (slot 0)
#define SY_AFFINITY 1

struct sy_addr {
	__u32 w[4];  // network order; IPv4 as ::ffff:a.b.c.d
};

struct sy_service_key {
	struct sy_addr addr;  // service address
	__u16 port;           // service port, network order
	__u8 proto;           // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad;
	__u16 slot;           // 0: the frontend; 1..count: its backends (host order)
	__u16 pad2;
};

struct sy_service_value {
	__u32 backend_id;        // slot > 0: key of sy_backends (host order)
	__u16 count;             // slot 0: backend slots (host order); 0 refuses connections
	__u16 flags;             // slot 0: SY_AFFINITY
	__u32 affinity_seconds;  // slot 0: ClientIP affinity timeout (host order)
};

struct sy_backend {
	struct sy_addr addr;
	__u16 port;  // network order
	__u16 pad;
};

// Reverse translation for recvmsg/getpeername: a socket and the backend it was sent to.
struct sy_rev_key {
	__u64 cookie;         // socket cookie
	struct sy_addr addr;  // backend address
	__u16 port;           // backend port, network order
	__u16 pad[3];
};

struct sy_rev_value {
	struct sy_addr addr;  // service address
	__u16 port;           // service port, network order
	__u16 pad;
};

// ClientIP affinity at the socket: the client is its network namespace.
struct sy_affinity_key {
	__u64 netns;          // network namespace cookie
	struct sy_addr addr;  // service address
	__u16 port;           // service port, network order
	__u8 proto;
	__u8 pad[5];
};

struct sy_affinity_value {
	__u32 backend_id;
	__u32 pad;
	__u64 last_ns;  // bpf_ktime_get_ns() of the last use
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct sy_service_key);
	__type(value, struct sy_service_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, struct sy_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, struct sy_rev_key);
	__type(value, struct sy_rev_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_rev_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, struct sy_affinity_key);
	__type(value, struct sy_affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_affinity SEC(".maps");

static __always_inline struct sy_backend *pick(struct bpf_sock_addr *ctx,
					       struct sy_service_key *key,
					       struct sy_service_value *fe)
{
	__u32 id = 0;
	struct sy_affinity_key ak = {};
	struct sy_affinity_value *av = 0;
	__u64 now = 0;

	if (fe->flags & SY_AFFINITY) {
		ak.netns = bpf_get_netns_cookie(ctx);
		ak.addr = key->addr;
		ak.port = key->port;
		ak.proto = key->proto;
		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&sy_affinity, &ak);
		if (av && now - av->last_ns < (__u64)fe->affinity_seconds * 1000000000ULL) {
			struct sy_backend *be = bpf_map_lookup_elem(&sy_backends, &av->backend_id);
			// A backend that is gone falls through to a new choice.
			if (be) {
				av->last_ns = now;
				return be;
			}
		}
	}
	key->slot = (bpf_get_prandom_u32() % fe->count) + 1;
	struct sy_service_value *slot = bpf_map_lookup_elem(&sy_services, key);
	if (!slot)
		return 0;
	id = slot->backend_id;
	struct sy_backend *be = bpf_map_lookup_elem(&sy_backends, &id);
	if (be && (fe->flags & SY_AFFINITY)) {
		struct sy_affinity_value v = { .backend_id = id, .last_ns = now };
		bpf_map_update_elem(&sy_affinity, &ak, &v, BPF_ANY);
	}
	return be;
}

static __always_inline int is_v4_mapped(const struct sy_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

// The destination the program sees, as a map address; 0 when it is not one we translate.
// `v6` is a constant in each program (the verifier refuses a context read whose offset
// depends on a branch the compiler merged).
static __always_inline int load_dest(struct bpf_sock_addr *ctx, struct sy_addr *a, const int v6)
{
	if (!v6) {
		if (ctx->user_family != SY_AF_INET)
			return 0;
		a->w[2] = bpf_htonl(0xffff);
		a->w[3] = ctx->user_ip4;
		return 1;
	}
	if (ctx->user_family == SY_AF_INET6) {
		a->w[0] = ctx->user_ip6[0];
		a->w[1] = ctx->user_ip6[1];
		a->w[2] = ctx->user_ip6[2];
		a->w[3] = ctx->user_ip6[3];
		return 1;
	}
	return 0;
}

// Writes a destination back; an IPv4 socket cannot take an IPv6 address (0: left alone).
static __always_inline int store_dest(struct bpf_sock_addr *ctx, const struct sy_addr *a,
				      __u16 port, const int v6)
{
	if (!v6) {
		if (!is_v4_mapped(a))
			return 0;
		ctx->user_ip4 = a->w[3];
	} else {
		ctx->user_ip6[0] = a->w[0];
		ctx->user_ip6[1] = a->w[1];
		ctx->user_ip6[2] = a->w[2];
		ctx->user_ip6[3] = a->w[3];
	}
	ctx->user_port = port;
	return 1;
}

// Rewrites a service destination to a backend; 1 lets the call proceed, 0 refuses it.
static __always_inline int translate(struct bpf_sock_addr *ctx, const int v6)
{
	__u8 proto = ctx->protocol;
	if (proto != SY_IPPROTO_TCP && proto != SY_IPPROTO_UDP)
		return 1;
	struct sy_service_key key = {};
	if (!load_dest(ctx, &key.addr, v6))
		return 1;
	key.port = (__u16)ctx->user_port;
	key.proto = proto;
	struct sy_service_value *fe = bpf_map_lookup_elem(&sy_services, &key);
	if (!fe)
		return 1;
	// A service without endpoints refuses at once, as kube-proxy's REJECT does.
	if (fe->count == 0) {
		bpf_set_retval(-SY_ECONNREFUSED);
		return 0;
	}
	struct sy_rev_value rv = { .addr = key.addr, .port = key.port };
	struct sy_backend *be = pick(ctx, &key, fe);
	if (!be)
		return 1;
	struct sy_rev_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = be->addr,
		.port = be->port,
	};
	if (!store_dest(ctx, &be->addr, be->port, v6))
		return 1;
	bpf_map_update_elem(&sy_rev_nat, &rk, &rv, BPF_ANY);
	return 1;
}

// Shows the service address instead of the backend's.
static __always_inline int reverse(struct bpf_sock_addr *ctx, const int v6)
{
	struct sy_rev_key rk = {};
	if (!load_dest(ctx, &rk.addr, v6))
		return 1;
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.port = (__u16)ctx->user_port;
	struct sy_rev_value *rv = bpf_map_lookup_elem(&sy_rev_nat, &rk);
	if (rv)
		store_dest(ctx, &rv->addr, rv->port, v6);
	return 1;
}

SEC("cgroup/connect4")
int sy_connect4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 0);
}

SEC("cgroup/recvmsg4")
int sy_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, 0);
}

SEC("cgroup/getpeername4")
int sy_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, 0);
}

SEC("cgroup/connect6")
int sy_connect6(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 1);
}

SEC("cgroup/sendmsg6")
int sy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 1);
}

SEC("cgroup/recvmsg6")
int sy_recvmsg6(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, 1);
}

SEC("cgroup/getpeername6")
int sy_getpeername6(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
