// swift-tools-version: 6.0
// Hato — a clustered SMTP relay. No Swift package dependencies: the toolchain
// and system C libraries (OpenSSL, SQLite, libpq, libresolv) only.
// Linux only (glibc sockets, epoll-free blocking I/O, libresolv, /proc): building on another
// system stops at the #error in Sources/Shared/Support/Platform.swift.
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

// Every target names each module it imports as a direct dependency: with Swift 6.3.1 an
// executable whose only dependency was HatoCoordinator (importing the shared code through it) was
// not rebuilt when a struct nested in ClusterConfig gained a stored property, and
// crashed at start copying ClusterConfig with the old layout (seen in debug and release builds).
let package = Package(
    name: "hato",
    products: [
        .executable(name: "hato-coordinator", targets: ["hato-coordinator"]),
        .executable(name: "hato-node", targets: ["hato-node"]),
    ],
    targets: [
        .systemLibrary(
            name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CPostgreSQL", path: "Sources/CPostgreSQL", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        .systemLibrary(
            name: "CResolv", path: "Sources/CResolv",
            providers: [.apt(["libc6-dev"])]),
        // epoll(7) and eventfd(2) of glibc, for HatoIO's EventLoop (nothing to link).
        .systemLibrary(
            name: "CEpoll", path: "Sources/CEpoll",
            providers: [.apt(["libc6-dev"])]),
        // The shared layers, lowest first; each names only the layers below it.
        .target(
            name: "HatoSupport", dependencies: [],
            path: "Sources/Shared/Support", swiftSettings: strict),
        .target(
            name: "HatoCrypto", dependencies: ["COpenSSL"],
            path: "Sources/Shared/Crypto", swiftSettings: strict),
        .target(
            name: "HatoIO", dependencies: ["HatoSupport", "COpenSSL", "CEpoll"],
            path: "Sources/Shared/IO", swiftSettings: strict),
        .target(
            name: "HatoHTTP", dependencies: ["HatoIO", "HatoSupport"],
            path: "Sources/Shared/HTTP", swiftSettings: strict),
        .target(
            name: "SMTPCore", dependencies: ["HatoIO", "HatoCrypto", "HatoSupport", "COpenSSL"],
            path: "Sources/Shared/SMTP", swiftSettings: strict),
        .target(
            name: "HatoMIME", dependencies: ["SMTPCore"],
            path: "Sources/Shared/MIME", swiftSettings: strict),
        .target(
            name: "HatoDKIM", dependencies: ["HatoCrypto", "HatoSupport", "COpenSSL"],
            path: "Sources/Shared/DKIM", swiftSettings: strict),
        .target(
            name: "HatoDNS", dependencies: ["HatoIO", "HatoSupport", "CResolv"],
            path: "Sources/Shared/DNS", swiftSettings: strict),
        .target(
            name: "HatoConfig",
            dependencies: ["SMTPCore", "HatoDKIM", "HatoIO", "HatoCrypto", "HatoSupport"],
            path: "Sources/Shared/Config", swiftSettings: strict),
        .target(
            name: "HatoDelivery", dependencies: ["HatoConfig", "SMTPCore", "HatoCrypto", "HatoSupport"],
            path: "Sources/Shared/Delivery", swiftSettings: strict),
        .target(
            name: "ClusterProtocol", dependencies: ["SMTPCore", "HatoIO", "HatoCrypto", "HatoSupport"],
            path: "Sources/Shared/Cluster", swiftSettings: strict),
        .target(
            name: "HatoCoordinator", dependencies: [
                "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDelivery", "HatoDKIM", "HatoDNS", "HatoHTTP", "HatoMIME",
                "HatoIO", "HatoSupport", "SMTPCore", "CSQLite", "CPostgreSQL"],
            path: "Sources/Coordinator/Core", swiftSettings: strict),
        .executableTarget(
            name: "hato-coordinator", dependencies: [
                "HatoCoordinator", "HatoConfig", "HatoIO", "HatoSupport"],
            path: "Sources/Coordinator/CLI", swiftSettings: strict),
        .target(
            name: "HatoNode", dependencies: [
                "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDKIM", "HatoDNS", "HatoDelivery",
                "HatoHTTP", "HatoIO", "HatoSupport", "SMTPCore"],
            path: "Sources/Node/Core", swiftSettings: strict),
        .executableTarget(
            name: "hato-node", dependencies: ["HatoNode", "HatoConfig", "HatoIO", "HatoSupport"],
            path: "Sources/Node/CLI", swiftSettings: strict),
        // Development and test tools, never linked into the product binaries: the capture MX,
        // process spawning, header and DKIM helpers (HatoTestKit), and the demo's sink.
        .target(
            name: "HatoTestKit", dependencies: ["HatoCrypto", "HatoIO", "HatoSupport"],
            path: "Sources/TestKit", swiftSettings: strict),
        .executableTarget(
            name: "hato-sink", dependencies: ["HatoTestKit", "HatoConfig", "HatoIO", "HatoSupport"],
            path: "Sources/DevTools/hato-sink", swiftSettings: strict),
        // Simulated worker nodes for bench/coordinator-ceiling: the real cluster protocol, every
        // recipient reported delivered at once, no SMTP.
        .executableTarget(
            name: "hato-simnode", dependencies: ["ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoIO", "HatoSupport", "SMTPCore"],
            path: "Sources/DevTools/hato-simnode", swiftSettings: strict),
        .testTarget(
            name: "SharedTests", dependencies: [
                "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDKIM", "HatoDNS", "HatoDelivery",
                "HatoHTTP", "HatoIO", "HatoMIME", "HatoSupport", "SMTPCore", "HatoTestKit"],
            path: "Tests/SharedTests", swiftSettings: strict),
        .testTarget(
            name: "CoordinatorTests", dependencies: [
                "HatoCoordinator", "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDKIM", "HatoHTTP", "HatoIO",
                "HatoSupport", "SMTPCore", "HatoDNS", "HatoTestKit"],
            path: "Tests/CoordinatorTests", swiftSettings: strict),
        .testTarget(
            name: "NodeTests", dependencies: [
                "HatoNode", "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDKIM", "HatoDNS", "HatoIO",
                "HatoSupport", "SMTPCore", "HatoTestKit"],
            path: "Tests/NodeTests", swiftSettings: strict),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "HatoTestKit", "HatoCoordinator", "ClusterProtocol", "HatoConfig", "HatoCrypto", "HatoDNS",
                "HatoHTTP", "HatoIO", "HatoSupport", "SMTPCore", "hato-coordinator", "hato-node", "hato-simnode"],
            path: "Tests/IntegrationTests", swiftSettings: strict),
    ]
)
