// Hostile input (issue 21): the rendezvous store of a data-parallel run. It binds the master address only,
// bounds what a peer can make it allocate, drops peers that hold a connection without a request, serves the
// others meanwhile, and a failed rendezvous is one line.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "support.h"
#include "xfer/dist/store.h"

namespace xfer::dist {
namespace {

/// A raw TCP connection to 127.0.0.1:port (what a hostile peer holds).
int kvs_connect(int port, const char* address = "127.0.0.1") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, address, &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// Everything the server sends until it closes the connection (at most `seconds`).
std::string kvs_drain(int fd, double seconds) {
  std::string got;
  char buf[256];
  for (int waited = 0; waited < seconds * 100; ++waited) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return got;
    got.append(buf, static_cast<size_t>(n));
  }
  return got + "(still open)";
}

TEST(Store, ServesEveryOperationToAClient) {
  auto server = KeyValueStore::serve("127.0.0.1", 0, 5);
  auto client = KeyValueStore::connect("127.0.0.1", server->port(), 5);
  client->set("a", std::string("x\0y", 3));
  EXPECT_EQ(server->get("a"), std::string("x\0y", 3));
  server->set("b", "2");
  EXPECT_EQ(client->get("b"), "2");
  EXPECT_EQ(client->add("n", 5), 5);
  EXPECT_EQ(server->add("n", -2), 3);
  EXPECT_TRUE(client->check({"a", "b"}));
  EXPECT_FALSE(client->check({"a", "zz"}));
  EXPECT_EQ(client->num_keys(), 3);
  EXPECT_TRUE(client->remove("a"));
  EXPECT_FALSE(client->remove("a"));
  // A wait that another rank satisfies later (what Gloo's rendezvous does for each peer's address).
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server->set("late", "here");
  });
  client->wait({"late", "b"}, 5);
  later.join();
  EXPECT_EQ(client->get("late"), "here");
  test::expect_bad_input([&] { client->wait({"never"}, 0.3); }, {"no rank set 'never' within 0.3 s"});
}

TEST(Store, BindsTheMasterAddressOnlySoLoopbackStaysLoopback) {
  auto server = KeyValueStore::serve("127.0.0.1", 0, 5);
  EXPECT_EQ(server->bound_address(), "127.0.0.1");
  // Any other address of this machine must refuse the connection (LibTorch's TCPStore listened on all).
  ifaddrs* list = nullptr;
  ASSERT_EQ(::getifaddrs(&list), 0);
  int tried = 0;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
    if (std::string(text).rfind("127.", 0) == 0) continue;
    ++tried;
    const int fd = kvs_connect(server->port(), text);
    EXPECT_LT(fd, 0) << "the store accepted a connection on " << text;
    if (fd >= 0) ::close(fd);
  }
  ::freeifaddrs(list);
  if (tried == 0)
    std::cout << "[ note ] no non-loopback IPv4 address here: only the bound address was checked\n";
}

TEST(Store, DeclaredLengthsAreBoundedBeforeAnythingIsAllocated) {
  auto server = KeyValueStore::serve("127.0.0.1", 0, 5);
  // 'S' with a key of 4 GiB - 1 bytes declared: refused at once, from 5 bytes, and the connection closed.
  const int fd = kvs_connect(server->port());
  ASSERT_GE(fd, 0);
  const char header[] = {'S', '\xff', '\xff', '\xff', '\xff'};
  ASSERT_EQ(::send(fd, header, sizeof header, 0), 5);
  const std::string reply = kvs_drain(fd, 5);
  ::close(fd);
  ASSERT_GE(reply.size(), 5u);
  EXPECT_EQ(reply[0], 3);  // refused
  EXPECT_NE(reply.find("a key of 4294967295 bytes (at most 4096)"), std::string::npos) << reply;
  // Past the bytes a store may hold: refused, the store still serves.
  StoreLimits small;
  small.max_bytes = 100;
  auto tight = KeyValueStore::serve("127.0.0.1", 0, 5, small);
  auto client = KeyValueStore::connect("127.0.0.1", tight->port(), 5);
  client->set("k", std::string(50, 'v'));
  test::expect_bad_input([&] { client->set("j", std::string(60, 'v')); }, {"more than 100 bytes"});
  EXPECT_EQ(client->get("k"), std::string(50, 'v'));
  // An unknown request.
  const int other = kvs_connect(tight->port());
  ASSERT_EQ(::send(other, "Zzz", 3, 0), 3);
  EXPECT_NE(kvs_drain(other, 5).find("unknown request"), std::string::npos);
  ::close(other);
}

TEST(Store, APeerHoldingConnectionsDelaysNobodyAndIsDropped) {
  StoreLimits limits;
  limits.request_seconds = 0.5;
  auto server = KeyValueStore::serve("127.0.0.1", 0, 5, limits);
  // Idle, and half a request: both held open while a rank does its whole rendezvous.
  const int idle = kvs_connect(server->port()), half = kvs_connect(server->port());
  ASSERT_GE(idle, 0);
  ASSERT_GE(half, 0);
  ASSERT_EQ(::send(half, "S\x05\x00", 3, 0), 3);
  auto client = KeyValueStore::connect("127.0.0.1", server->port(), 5);
  client->set("rank1", "addr");
  EXPECT_EQ(server->get("rank1"), "addr");
  // Both are closed by the server once request_seconds pass (kvs_drain returns at the close).
  EXPECT_EQ(kvs_drain(idle, 5), "");
  EXPECT_EQ(kvs_drain(half, 5), "");
  ::close(idle);
  ::close(half);
}

TEST(Store, AnUnreachableMasterIsOneLineAfterTheTimeout) {
  int port = 0;
  {  // a port nothing listens on
    auto probe = KeyValueStore::serve("127.0.0.1", 0, 1);
    port = probe->port();
  }
  auto client = KeyValueStore::connect("127.0.0.1", port, 0.5);
  try {
    client->set("k", "v");
    ADD_FAILURE() << "expected BadInput";
  } catch (const BadInput& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cannot reach the master at 127.0.0.1:" + std::to_string(port)), std::string::npos)
        << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace xfer::dist
