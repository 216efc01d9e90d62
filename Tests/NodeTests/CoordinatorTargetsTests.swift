import Testing
@testable import HatoIO
@testable import HatoNode

/// Which coordinator a node tries next: redirects, failures, the redirect-loop guard.
@Suite struct CoordinatorTargetsTests {
    let a = SocketAddress(host: "127.0.0.1", port: 7601)
    let b = SocketAddress(host: "127.0.0.2", port: 7601)
    let c = SocketAddress(host: "127.0.0.3", port: 7601)

    @Test func oneCoordinatorIsAlwaysTheTarget() {
        var t = CoordinatorTargets(configured: [a])
        #expect(t.next == a)
        t.failed(); #expect(t.next == a)
        t.joined(); t.failed(); #expect(t.next == a)
    }

    @Test func failuresWalkTheConfiguredCoordinatorsInTurn() {
        var t = CoordinatorTargets(configured: [a, b, c])
        #expect(t.next == a)
        t.failed(); #expect(t.next == b)
        t.failed(); #expect(t.next == c)
        t.failed(); #expect(t.next == a)
    }

    @Test func aRedirectIsFollowedOnceAndAJoinThereSticks() {
        var t = CoordinatorTargets(configured: [a, b, c])
        t.redirected(to: "127.0.0.3:7601")
        #expect(t.followingRedirect && t.next == c)
        t.joined()
        #expect(!t.followingRedirect && t.next == c && t.redirectsInARow == 0)
        // A failed redirect target falls back to the configured order where it was.
        t.redirected(to: "[::1]:7601")
        #expect(t.next == SocketAddress(host: "::1", port: 7601))
        t.failed()
        #expect(t.next == c)
    }

    @Test func aRedirectWithoutALeaderOrAnUnparsableOneMovesOn() {
        var t = CoordinatorTargets(configured: [a, b])
        t.redirected(to: nil)
        #expect(!t.followingRedirect && t.next == b)
        t.redirected(to: "not an address")
        #expect(!t.followingRedirect && t.next == a)
    }

    @Test func redirectLoopsFallBackToTheConfiguredOrder() {
        var t = CoordinatorTargets(configured: [a, b])
        for _ in 0..<CoordinatorTargets.maximumRedirectsInARow {
            t.redirected(to: "127.0.0.2:7601")
            #expect(t.followingRedirect)
        }
        t.redirected(to: "127.0.0.2:7601")
        #expect(!t.followingRedirect, "the fourth redirect in a row is not followed")
        t.redirected(to: "127.0.0.2:7601")
        #expect(t.followingRedirect, "after one round in the configured order, redirects are followed again")
        t.joined()
        #expect(t.redirectsInARow == 0, "a join resets the guard")
    }
}
