import type { FastifyInstance } from 'fastify'
import type { Agent } from '../agent/agent.js'

/** Every `/api/v1` route. Handlers only translate HTTP to Agent calls. */
export function registerRoutes (app: FastifyInstance, agent: Agent): void {
  app.get('/api/v1/status', async () => agent.hostStatus())
  app.get('/api/v1/peers', async () => agent.peerList())
}
