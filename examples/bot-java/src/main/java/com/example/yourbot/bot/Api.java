package com.example.yourbot.bot;

import com.example.yourbot.switchboard.v1.AccountServiceGrpc;
import com.example.yourbot.switchboard.v1.ConversationServiceGrpc;
import com.example.yourbot.switchboard.v1.CreateTokenRequest;
import com.example.yourbot.switchboard.v1.CreateTokenResponse;
import com.example.yourbot.switchboard.v1.GatewayServiceGrpc;
import com.example.yourbot.switchboard.v1.RegisterRequest;
import com.example.yourbot.switchboard.v1.RegisterResponse;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ForwardingClientCall;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import java.io.IOException;
import java.net.URI;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/** The generated clients on one HTTP/2 connection, authenticated as the bot's device. */
final class Api implements AutoCloseable {
  /** Every unary call has a deadline. */
  static final long CALL_TIMEOUT_S = 10;
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  final ConversationServiceGrpc.ConversationServiceBlockingStub conversations;
  final GatewayServiceGrpc.GatewayServiceBlockingStub gateway;
  final GatewayServiceGrpc.GatewayServiceStub gatewayAsync;

  Api(String server, BotState state) {
    channel = openChannel(server);
    // AccountService without a token, for CreateToken; every other call gets the token.
    var signup = AccountServiceGrpc.newBlockingStub(channel);
    Channel authed = ClientInterceptors.intercept(channel, new BearerToken(signup, state));
    conversations = ConversationServiceGrpc.newBlockingStub(authed);
    gateway = GatewayServiceGrpc.newBlockingStub(authed);
    gatewayAsync = GatewayServiceGrpc.newStub(authed);
  }

  /**
   * h2c for http:// (a development server), TLS for https://. Keepalive pings detect a connection
   * that died silently (a NAT timeout, a lost route), so a stream that would otherwise wait forever
   * fails with UNAVAILABLE and the bot reconnects.
   */
  static ManagedChannel openChannel(String server) {
    URI url = URI.create(server);
    boolean tls = "https".equals(url.getScheme());
    int port = url.getPort() != -1 ? url.getPort() : tls ? 443 : 80;
    NettyChannelBuilder b =
        NettyChannelBuilder.forAddress(url.getHost(), port)
            .keepAliveTime(30, TimeUnit.SECONDS)
            .keepAliveTimeout(10, TimeUnit.SECONDS);
    return (tls ? b.useTransportSecurity() : b.usePlaintext()).build();
  }

  /** `authorization: Bearer <token>` on every call, refreshed a minute before it expires. */
  private static final class BearerToken implements ClientInterceptor {
    private final AccountServiceGrpc.AccountServiceBlockingStub signup;
    private final BotState state;
    private String token = "";
    private long expiresAtMs = 0;

    BearerToken(AccountServiceGrpc.AccountServiceBlockingStub signup, BotState state) {
      this.signup = signup;
      this.state = state;
    }

    private synchronized String token() {
      if (System.currentTimeMillis() > expiresAtMs - 60_000) {
        CreateTokenResponse t =
            signup
                .withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS)
                .createToken(
                    CreateTokenRequest.newBuilder()
                        .setDeviceId(state.deviceId)
                        .setDeviceSecret(state.deviceSecret)
                        .build());
        token = t.getAccessToken();
        expiresAtMs = t.getExpiresAtMs();
      }
      return token;
    }

    @Override
    public <Q, R> ClientCall<Q, R> interceptCall(MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
      return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
        @Override
        public void start(Listener<R> listener, Metadata headers) {
          headers.put(AUTHORIZATION, "Bearer " + token());
          super.start(listener, headers);
        }
      };
    }
  }

  /** Reads the bot's state file, or registers the bot's account and writes a new one. */
  static BotState loadOrRegister(String server, Path path, String username) throws IOException {
    BotState saved = BotState.load(path);
    if (saved != null) return saved;
    ManagedChannel ch = openChannel(server);
    try {
      RegisterResponse r =
          AccountServiceGrpc.newBlockingStub(ch)
              .withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS)
              .register(
                  RegisterRequest.newBuilder()
                      .setUsername(username)
                      .setDisplayName("Echo bot")
                      .setDeviceName("bot")
                      .build());
      BotState state = new BotState();
      state.userId = r.getUser().getUserId();
      state.deviceId = r.getCredential().getDeviceId();
      state.deviceSecret = r.getCredential().getDeviceSecret();
      state.save(path);
      return state;
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.ALREADY_EXISTS)
        throw new IllegalStateException(
            "username " + username + " is taken; pass that bot's --state file or another --username");
      throw e;
    } finally {
      ch.shutdownNow();
    }
  }

  /**
   * Lets the next call connect at once. The channel's own reconnect backoff grows to 2 minutes;
   * the bot's backoff (30 s at most) decides when to try instead.
   */
  void resetConnectBackoff() {
    channel.resetConnectBackoff();
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }
}
